"""Model service schemas (spec §4.5-4.6): the API, the CLI and YAML use these."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, model_validator

from autoscaling.config import LLMPolicyOptions, Mode
from cluster.runtime.running_time import running_seconds
from cluster.schemas import AutoStop, Notified, StrictModel, format_duration, pattern_rule
from cluster.services.lifecycle import Status
from cluster.state.db import Service
from serve_apps.placement import NodeType

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
    instances: int = Field(1, ge=1, le=MAX_INSTANCES, description="Instances (engine replicas): a fixed count "
                                                                   "when autoscale is off.")
    autoscale: Mode = Field("off", description="llm: scale on vLLM's queue and KV usage; requests: Ray Serve's "
                                               "policy on ongoing requests; off: `instances`, fixed.")
    min_instances: int | None = Field(None, ge=0, le=MAX_INSTANCES, description="With autoscale: the fewest "
                                      "instances (0: scale to zero when idle; default 1).")
    max_instances: int | None = Field(None, ge=1, le=MAX_INSTANCES, description="With autoscale: the most "
                                      "instances (counted against the project's instances quota).")
    autoscale_options: LLMPolicyOptions | None = Field(None, description="The llm policy's windows and "
                                                                         "thresholds; default: the policy's.")
    max_batch: int | None = Field(None, ge=1, le=4096, description="Requests one instance runs at once "
                                  "(vLLM max_num_seqs); more wait in its queue. Default: vLLM's.")
    qps: int | None = Field(None, ge=1, le=MAX_QPS, description="Requests per second over all callers; none: no limit.")
    node_type: NodeType = Field(None, description="Run the engines only on nodes of this type: the custom Ray "
                                "resource those nodes were started with (ray start --resources "
                                "'{\"maas-gpu\": 1}'); each engine takes 0.01 of it. None: any node.")
    moderation: bool = Field(True, description="Content moderation of inputs and outputs.")
    auto_stop: AutoStop = Field(None, description="Stop after this much Running time: 1h, 2h, 4h, 6h or a "
                                                  "custom duration (90m, 12h). Queued or starting time is not "
                                                  "counted. None: run until stopped.")
    notify_events: list[Status] = Field([], description="The statuses to notify, e.g. Running, Terminated, Failed.")

    @model_validator(mode="after")
    def _scaling(self) -> "ServiceCreate":
        self.min_instances, self.max_instances = scaling_bounds(self.autoscale, self.min_instances,
                                                                self.max_instances, self.autoscale_options)
        return self


def scaling_bounds(autoscale: str, low: int | None, high: int | None,
                   options: LLMPolicyOptions | None) -> tuple[int | None, int | None]:
    """The product's rule: with autoscale off the service has `instances`, a fixed count, and no bounds."""
    if autoscale == "off":
        if low is not None or high is not None or options is not None:
            raise ValueError("min_instances, max_instances and autoscale_options need autoscale llm or requests; "
                             "with autoscale off the service runs `instances`, a fixed count")
        return None, None
    if high is None:
        raise ValueError(f"autoscale {autoscale} needs max_instances")
    low = 1 if low is None else low
    if high < low:
        raise ValueError(f"max_instances ({high}) is below min_instances ({low})")
    if options is not None and autoscale != "llm":
        raise ValueError("autoscale_options are the llm policy's")
    return low, high


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
    instances: int = Field(description="The fixed count when autoscale is off (not used while it is on).")
    autoscale: str = Field(description="llm, requests or off.")
    min_instances: int | None
    max_instances: int | None
    autoscale_options: dict | None
    max_batch: int | None
    node_type: str | None = Field(description="The custom Ray resource the engines' nodes have; none: any node.")
    replicas_running: int = Field(description="Engine replicas serving now, as Serve last reported.")
    replicas_target: int | None = Field(description="The replica count Serve aims for (the autoscaler's target).")
    last_scaling: dict | None = Field(description="The last autoscaling decision: at, from_replicas, "
                                                  "to_replicas, reason, signals (waiting, running, kv_usage ...).")
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
    def of(cls, row: Service, replicas: list[dict], target: int | None = None) -> "ServiceView":
        return cls(id=row.id, project_id=row.project_id, name=row.name, description=row.description,
                   model=row.model_id, model_version=row.model_version, instances=row.instances, qps=row.qps,
                   autoscale=row.autoscale or "off", min_instances=row.min_instances, max_instances=row.max_instances,
                   autoscale_options=row.autoscale_options, max_batch=row.max_batch, node_type=row.node_type,
                   replicas_running=sum(r["state"] == "RUNNING" for r in replicas), replicas_target=target,
                   last_scaling=row.last_scaling,
                   moderation=row.moderation, auto_stop=format_duration(row.auto_stop_s),
                   running_seconds=running_seconds(row.run_seconds, row.running_since),
                   notify_url=row.notify_url, notify_events=list(row.notify_events or []), status=row.status,
                   status_reason=row.status_reason, desired=row.desired, generation=row.generation,
                   app_name=row.app_name, replicas=[ReplicaView(**r) for r in replicas],
                   created_at=row.created_at, updated_at=row.updated_at)


class ScaleRequest(StrictModel):
    instances: int = Field(ge=1, le=MAX_INSTANCES)
    confirm: str = Field("", description="Scale-in (fewer instances) needs the confirmation text YES.")


class AutoscaleRequest(StrictModel):
    """A live change of how the service scales (from Running or Concerning; running replicas keep serving)."""

    autoscale: Mode = Field(description="llm, requests or off.")
    min_instances: int | None = Field(None, ge=0, le=MAX_INSTANCES)
    max_instances: int | None = Field(None, ge=1, le=MAX_INSTANCES)
    instances: int | None = Field(None, ge=1, le=MAX_INSTANCES, description="With autoscale off: the fixed count "
                                                                            "(default: the current one).")
    autoscale_options: LLMPolicyOptions | None = None

    @model_validator(mode="after")
    def _scaling(self) -> "AutoscaleRequest":
        if self.autoscale != "off" and self.instances is not None:
            raise ValueError("instances is the fixed count of autoscale off; use min_instances and max_instances")
        self.min_instances, self.max_instances = scaling_bounds(self.autoscale, self.min_instances,
                                                                self.max_instances, self.autoscale_options)
        return self


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
