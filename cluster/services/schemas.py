"""Model service schemas (spec §4.5-4.6): the API, the CLI and YAML use these."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

from cluster.runtime.running_time import running_seconds
from cluster.schemas import AutoStop, Notified, StrictModel, format_duration, pattern_rule
from cluster.services.lifecycle import Status
from cluster.state.db import Service

MAX_INSTANCES = 16
MAX_QPS = 100_000
ServiceName = Annotated[str, pattern_rule(
    r"^[A-Za-z\u3400-\u4dbf\u4e00-\u9fff][A-Za-z0-9\u3400-\u4dbf\u4e00-\u9fff_-]{0,63}$",
    "name must be 1-64 characters: a CJK character or a letter first, then only CJK characters, letters, "
    "digits, - or _")]
ModelVersion = Annotated[str, pattern_rule(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$",
                                           "model_version must be 1-32 of A-Z a-z 0-9 . _ -")]


class ServiceCreate(Notified):
    name: ServiceName = Field(description="1-64 characters: a CJK character or a letter first, then CJK "
                                          "characters, letters, digits, - or _. Unique in the project.")
    model: str = Field(description="A catalog model id, or a model of yours (id or name).")
    model_version: ModelVersion = Field("1", description="The model version to deploy.")
    description: str = Field("", max_length=256)
    instances: int = Field(1, ge=1, le=MAX_INSTANCES, description="Instances (engine replicas).")
    qps: int | None = Field(None, ge=1, le=MAX_QPS, description="Requests per second over all callers; none: no limit.")
    moderation: bool = Field(True, description="Content moderation of inputs and outputs.")
    auto_stop: AutoStop = Field(None, description="Stop after this much Running time: 1h, 2h, 4h, 6h or a "
                                                  "custom duration (90m, 12h). Queued or starting time is not "
                                                  "counted. None: run until stopped.")
    notify_events: list[Status] = Field([], description="The statuses to notify, e.g. Running, Terminated, Failed.")


class ReplicaView(BaseModel):
    id: str
    state: str


class ServiceView(BaseModel):
    id: str
    project_id: str
    name: str
    description: str
    model: str
    model_version: str
    instances: int
    qps: int | None
    moderation: bool
    auto_stop: str | None
    running_seconds: int = Field(description="Running time counted toward auto-stop since the last start.")
    notify_url: str | None
    notify_events: list[str]
    status: str = Field(description="One of the 18 API values (spec §4.6.1).")
    status_reason: str
    desired: str = Field(description="running, stopped or deleted: what the reconciler makes Ray match.")
    generation: int
    app_name: str = Field(description="The Ray Serve application answering calls.")
    replicas: list[ReplicaView] = Field(description="Engine replicas of that application, as Serve last reported.")
    created_at: int
    updated_at: int

    @classmethod
    def of(cls, row: Service, replicas: list[dict]) -> "ServiceView":
        return cls(id=row.id, project_id=row.project_id, name=row.name, description=row.description,
                   model=row.model_id, model_version=row.model_version, instances=row.instances, qps=row.qps,
                   moderation=row.moderation, auto_stop=format_duration(row.auto_stop_s),
                   running_seconds=running_seconds(row.run_seconds, row.running_since),
                   notify_url=row.notify_url, notify_events=list(row.notify_events or []), status=row.status,
                   status_reason=row.status_reason, desired=row.desired, generation=row.generation,
                   app_name=row.app_name, replicas=[ReplicaView(**r) for r in replicas],
                   created_at=row.created_at, updated_at=row.updated_at)


class ScaleRequest(StrictModel):
    instances: int = Field(ge=1, le=MAX_INSTANCES)
    confirm: str = Field("", description="Scale-in (fewer instances) needs the confirmation text YES.")


class QpsRequest(StrictModel):
    qps: int = Field(ge=1, le=MAX_QPS)


class UpgradeRequest(StrictModel):
    model_version: ModelVersion = Field(description="The version to upgrade to; the current one serves until it "
                                                    "is ready.")


class EventView(BaseModel):
    id: int
    service_id: str
    at: int
    status: str
    message: str
    notified: bool


class MirrorAction(StrictModel):
    """The product's service API body: `restart` (re)starts the service, `terminate` stops it."""

    action_type: Literal["restart", "terminate"]
