"""Model services ("my services", spec §4.5 and §4.6): deploy a catalog model as a service of the project's
own, then start, stop, scale, limit, upgrade and delete it.

The API writes only desired state (SQL) and the events of the changes it makes; the reconciler
(`cluster/reconciler.py`) makes Ray Serve match and derives the real status from Serve. Which action is
allowed from which status is data (`ALLOWED_FROM`), checked in one place.
"""

from __future__ import annotations

import re
import uuid
from enum import Enum
from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from sqlalchemy import or_, select, update

from cluster.db import Service, ServiceEvent, now, session_scope
from cluster.deps import ProjectId, database_url, reload_accounting
from serve_apps.catalog import builtin
from serve_apps.errors import PlatformError


class Status(str, Enum):
    """The 18 status values of the service API (spec §4.6.1)."""

    CREATING = "Creating"
    INITING = "Initing"
    PENDING = "Pending"  # queued: desired running, not yet handed to Ray Serve
    WAITING = "Waiting"
    DEPLOYING = "Deploying"  # the Serve application is starting
    RUNNING = "Running"
    CONCERNING = "Concerning"  # alarm: serving, but not every instance is healthy
    FAILED = "Failed"
    COMPLETED = "Completed"
    TERMINATING = "Terminating"
    TERMINATED = "Terminated"  # stopped
    DELETING = "Deleting"
    DELETED = "Deleted"
    UNKNOWN = "Unknown"
    ABNORMAL = "Abnormal"
    RESTARTING = "Restarting"  # the Serve application vanished (platform or Ray restart) and is re-created
    UPGRADE = "Upgrade"  # a new version deploys while the old one keeps serving
    SCALE = "Scale"  # the instance count is changing; existing instances keep serving


# The product's UI states (spec §4.5-§4.7) and the API value each one is reported as.
UI_STATES: dict[str, Status] = {
    "排队中 Queuing": Status.PENDING,
    "启动中 Starting": Status.DEPLOYING,
    "部署中 Deploying": Status.DEPLOYING,
    "运行中 Running": Status.RUNNING,
    "告警 Alarm": Status.CONCERNING,
    "部署失败 Deployment failed": Status.FAILED,
    "停止中 Stopping": Status.TERMINATING,
    "已停止 Stopped": Status.TERMINATED,
    "更新中 Updating": Status.SCALE,
    "升级中 Upgrading": Status.UPGRADE,
    "删除中 Deleting": Status.DELETING,
}


class Action(str, Enum):
    START = "start"
    STOP = "stop"
    SCALE = "scale"
    SET_QPS = "set-qps"
    UPGRADE = "upgrade"
    DELETE = "delete"


_STARTING = {Status.PENDING, Status.WAITING, Status.CREATING, Status.INITING, Status.DEPLOYING, Status.RESTARTING}
ALLOWED_FROM: dict[Action, frozenset[Status]] = {
    Action.STOP: frozenset(_STARTING | {Status.RUNNING, Status.CONCERNING}),
    Action.START: frozenset({Status.FAILED, Status.TERMINATED}),
    Action.SCALE: frozenset({Status.RUNNING, Status.CONCERNING}),
    Action.SET_QPS: frozenset({Status.RUNNING, Status.CONCERNING}),
    Action.UPGRADE: frozenset({Status.RUNNING, Status.CONCERNING}),
    Action.DELETE: frozenset(set(Status) - {Status.DELETING, Status.DELETED}),
}


def check_action(name: str, status: str, action: Action) -> None:
    """Refuse an action the service's status does not allow (409, saying which statuses would)."""
    allowed = ALLOWED_FROM[action]
    if status not in {s.value for s in allowed}:
        ordered = [s.value for s in Status if s in allowed]
        raise PlatformError("MaaS.0409", reason=f"Cannot {action.value} the service {name!r} while it is {status}: "
                                                f"{action.value} is allowed only when {', '.join(ordered)}.")


# -- schemas -------------------------------------------------------------------------------------------
_NAME = re.compile(r"^[A-Za-z\u3400-\u4dbf\u4e00-\u9fff][A-Za-z0-9\u3400-\u4dbf\u4e00-\u9fff_-]{0,63}$")
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$")
_DURATION = re.compile(r"^(\d+)([mh])$")
AUTO_STOP_PRESETS = ("1h", "2h", "4h", "6h")
MAX_AUTO_STOP_S = 30 * 86400
MAX_INSTANCES = 16
MAX_QPS = 100_000


def parse_auto_stop(value: str) -> int:
    """`1h`, `2h`, `4h`, `6h`, or a custom whole number of minutes or hours (`90m`, `12h`), up to 30 days."""
    match = _DURATION.match(value.strip())
    if not match:
        raise ValueError("auto_stop must be 1h, 2h, 4h, 6h or a custom duration such as 90m or 12h")
    seconds = int(match.group(1)) * (60 if match.group(2) == "m" else 3600)
    if not 60 <= seconds <= MAX_AUTO_STOP_S:
        raise ValueError("auto_stop must be between 1 minute and 30 days")
    return seconds


def format_duration(seconds: int | None) -> str | None:
    if seconds is None:
        return None
    return f"{seconds // 3600}h" if seconds % 3600 == 0 else f"{seconds // 60}m"


class ServiceCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="1-64 characters: a CJK character or a letter first, then CJK characters, "
                                  "letters, digits, - or _. Unique in the project.")
    model: str = Field(description="A catalog model id.")
    model_version: str = Field("1", description="The model version to deploy.")
    description: str = Field("", max_length=256)
    instances: int = Field(1, ge=1, le=MAX_INSTANCES, description="Instances (engine replicas).")
    qps: int | None = Field(None, ge=1, le=MAX_QPS, description="Requests per second over all callers; none: no limit.")
    moderation: bool = Field(True, description="Content moderation of inputs and outputs.")
    auto_stop: str | None = Field(None, description="Stop after this much Running time: 1h, 2h, 4h, 6h or a "
                                                     "custom duration (90m, 12h). Queued or starting time is not "
                                                     "counted. None: run until stopped.")
    notify_url: str | None = Field(None, max_length=1024, description="Webhook that receives a JSON POST for "
                                                                      "each status change in notify_events.")
    notify_events: list[Status] = Field([], description="The statuses to notify, e.g. Running, Terminated, Failed.")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError("name must be 1-64 characters: a CJK character or a letter first, then only CJK "
                             "characters, letters, digits, - or _")
        return value

    @field_validator("model_version")
    @classmethod
    def _version(cls, value: str) -> str:
        if not _VERSION.match(value):
            raise ValueError("model_version must be 1-32 of A-Z a-z 0-9 . _ -")
        return value

    @field_validator("auto_stop")
    @classmethod
    def _auto_stop(cls, value: str | None) -> str | None:
        if value is not None:
            parse_auto_stop(value)
        return value

    @model_validator(mode="after")
    def _notification(self) -> "ServiceCreate":
        if self.notify_url is not None and not re.match(r"^https?://[^\s/]+", self.notify_url):
            raise ValueError("notify_url must be an http:// or https:// URL")
        if bool(self.notify_url) != bool(self.notify_events):
            raise ValueError("event notification needs both notify_url and at least one of notify_events")
        return self


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
    def of(cls, row: Service) -> "ServiceView":
        from cluster import reconciler

        running = row.run_seconds + (now() - row.running_since if row.running_since else 0)
        return cls(id=row.id, project_id=row.project_id, name=row.name, description=row.description,
                   model=row.model_id, model_version=row.model_version, instances=row.instances, qps=row.qps,
                   moderation=row.moderation, auto_stop=format_duration(row.auto_stop_s), running_seconds=running,
                   notify_url=row.notify_url, notify_events=list(row.notify_events or []), status=row.status,
                   status_reason=row.status_reason, desired=row.desired, generation=row.generation,
                   app_name=row.app_name, replicas=[ReplicaView(**r) for r in reconciler.replicas(row.app_name)],
                   created_at=row.created_at, updated_at=row.updated_at)


class ScaleRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    instances: int = Field(ge=1, le=MAX_INSTANCES)
    confirm: str = Field("", description="Scale-in (fewer instances) needs the confirmation text YES.")


class QpsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    qps: int = Field(ge=1, le=MAX_QPS)


class UpgradeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model_version: str = Field(description="The version to upgrade to; the current one serves until it is ready.")

    @field_validator("model_version")
    @classmethod
    def _version(cls, value: str) -> str:
        return ServiceCreate._version(value)


class EventView(BaseModel):
    id: int
    service_id: str
    at: int
    status: str
    message: str
    notified: bool


class MirrorAction(BaseModel):
    """The product's service API body: `restart` (re)starts the service, `terminate` stops it."""

    model_config = ConfigDict(extra="forbid")
    action_type: Literal["restart", "terminate"]


# -- state changes ---------------------------------------------------------------------------------------
def _find(session, project_id: str, service: str) -> Service:
    row = session.scalar(select(Service).where(Service.project_id == project_id,
                                               or_(Service.id == service, Service.name == service)))
    if row is None:
        raise PlatformError("MaaS.0404", what=f"Service {service!r}")
    return row


async def _after_change(event_ids: list[int]) -> None:
    """Every committed change: the accounting actor reloads routes and limits, the reconciler wakes up and
    sends the event notifications."""
    from cluster import reconciler

    await reload_accounting()
    reconciler.notify(event_ids)
    reconciler.wake()


async def _transition(project_id: str, service: str, action: Action, changes, message: str) -> ServiceView:
    """Check `action` against the current status, then apply `changes(row) -> dict` only if the status is
    still the one checked (the reconciler writes status concurrently)."""
    from cluster import reconciler

    for _attempt in range(5):
        with session_scope(database_url()) as session:
            row = _find(session, project_id, service)
            check_action(row.name, row.status, action)
            values = changes(row) | {"updated_at": now()}
            done = session.execute(update(Service).where(Service.id == row.id, Service.status == row.status)
                                   .values(**values))
            if done.rowcount != 1:
                continue
            session.expire(row)
            session.refresh(row)
            event_id = reconciler.record_event(session, row, values.get("status", row.status),
                                               message.format(row=row), status_changed="status" in values)
            view = ServiceView.of(row)
        await _after_change([event_id] if event_id else [])
        return view
    raise PlatformError("MaaS.0409", reason=f"The service {service!r} is changing status; try again.")


router = APIRouter(prefix="/v1/{project_id}/services", tags=["services"])


@router.post("", status_code=201, response_model=ServiceView)
async def create_service(project_id: ProjectId, spec: ServiceCreate):
    from cluster import reconciler

    with session_scope(database_url()) as session:
        try:
            builtin(spec.model)
        except KeyError:  # not in the catalog: one of the project's own models (name or id), or nothing
            from cluster import my_models

            resolved = my_models.resolve_version(session, project_id, spec.model, spec.model_version)
            if resolved.kind != "full":
                raise PlatformError("MaaS.0400", reason=(
                    f"A LoRA version needs no service of its own: it is served on {resolved.base_model} as "
                    f"{resolved.card.id!r} already.")) from None
            spec = spec.model_copy(update={"model": resolved.model_id, "model_version": str(resolved.version)})
        if session.scalar(select(Service.id).where(Service.project_id == project_id, Service.name == spec.name)):
            raise PlatformError("MaaS.0409", reason=f"A service named {spec.name!r} already exists in this project.")
        row = Service(id=uuid.uuid4().hex, project_id=project_id, name=spec.name, description=spec.description,
                      model_id=spec.model, model_version=spec.model_version, instances=spec.instances, qps=spec.qps,
                      moderation=spec.moderation, notify_url=spec.notify_url,
                      notify_events=[s.value for s in spec.notify_events],
                      auto_stop_s=parse_auto_stop(spec.auto_stop) if spec.auto_stop else None,
                      desired="running", status=Status.PENDING.value, generation=1, app_name="")
        session.add(row)
        session.flush()
        event_id = reconciler.record_event(session, row, Status.PENDING.value,
                                           f"Created from {spec.model} version {spec.model_version}; queued.")
        view = ServiceView.of(row)
    await _after_change([event_id] if event_id else [])
    return view


@router.get("", response_model=list[ServiceView])
async def list_services(project_id: ProjectId):
    with session_scope(database_url()) as session:
        rows = session.scalars(select(Service).where(Service.project_id == project_id).order_by(Service.created_at))
        return [ServiceView.of(row) for row in rows]


@router.get("/{service}", response_model=ServiceView)
async def get_service(project_id: ProjectId, service: str):
    with session_scope(database_url()) as session:
        return ServiceView.of(_find(session, project_id, service))


def _start(row: Service) -> dict:
    return {"desired": "running", "status": Status.PENDING.value, "status_reason": "", "run_seconds": 0,
            "running_since": None}


def _stop(row: Service) -> dict:
    return {"desired": "stopped", "status": Status.TERMINATING.value, "status_reason": ""}


@router.post("/{service}/start", response_model=ServiceView)
async def start_service(project_id: ProjectId, service: str):
    return await _transition(project_id, service, Action.START, _start, "Start requested; queued.")


@router.post("/{service}/stop", response_model=ServiceView)
async def stop_service(project_id: ProjectId, service: str):
    return await _transition(project_id, service, Action.STOP, _stop, "Stop requested.")


@router.post("/{service}/scale", response_model=ServiceView)
async def scale_service(project_id: ProjectId, service: str, spec: ScaleRequest):
    def changes(row: Service) -> dict:
        if spec.instances == row.instances:
            raise PlatformError("MaaS.0409", reason=f"The service {row.name!r} already has {row.instances} "
                                                    f"instance{'s' * (row.instances != 1)}.")
        if spec.instances < row.instances and spec.confirm != "YES":
            raise PlatformError("MaaS.0400", reason="Scaling in (fewer instances) needs the confirmation text YES.")
        return {"instances": spec.instances, "status": Status.SCALE.value, "status_reason": ""}

    return await _transition(project_id, service, Action.SCALE, changes, "Scaling to {row.instances} instances.")


@router.post("/{service}/qps", response_model=ServiceView)
async def set_service_qps(project_id: ProjectId, service: str, spec: QpsRequest):
    return await _transition(project_id, service, Action.SET_QPS, lambda row: {"qps": spec.qps},
                             "QPS limit set to {row.qps}.")


@router.post("/{service}/upgrade", response_model=ServiceView)
async def upgrade_service(project_id: ProjectId, service: str, spec: UpgradeRequest):
    def changes(row: Service) -> dict:
        version = spec.model_version
        if row.model_id.startswith("mdl-"):  # one of the project's models: the version must exist and be full
            from cluster import my_models

            with session_scope(database_url()) as session:
                resolved = my_models.resolve_version(session, project_id, row.model_id, version)
            if resolved.kind != "full":
                raise PlatformError("MaaS.0400", reason=f"Version {version!r} is a LoRA adapter: it is served on "
                                                        f"{resolved.base_model} as {resolved.card.id!r}.")
            version = str(resolved.version)
        if version == row.model_version:
            raise PlatformError("MaaS.0409", reason=f"The service {row.name!r} already runs version "
                                                    f"{row.model_version!r}.")
        return {"model_version": version, "previous_version": row.model_version,
                "generation": row.generation + 1,
                "status": Status.UPGRADE.value, "status_reason": ""}

    return await _transition(project_id, service, Action.UPGRADE, changes,
                             "Upgrading to version {row.model_version}; the current version keeps serving.")


@router.delete("/{service}", status_code=202, response_model=ServiceView)
async def delete_service(project_id: ProjectId, service: str, confirm: str = ""):
    if confirm != "DELETE":
        raise PlatformError("MaaS.0400", reason="Deleting a service needs the confirmation text DELETE.")
    return await _transition(project_id, service, Action.DELETE,
                             lambda row: {"desired": "deleted", "status": Status.DELETING.value, "status_reason": ""},
                             "Delete requested.")


@router.get("/{service}/events", response_model=list[EventView])
async def list_events(project_id: ProjectId, service: str):
    """Newest first, 30 days. A deleted service's events stay listable by its id."""
    with session_scope(database_url()) as session:
        row = session.scalar(select(Service).where(Service.project_id == project_id,
                                                   or_(Service.id == service, Service.name == service)))
        service_id = row.id if row is not None else service
        events = session.scalars(select(ServiceEvent).where(ServiceEvent.project_id == project_id,
                                                            ServiceEvent.service_id == service_id)
                                 .order_by(ServiceEvent.id.desc())).all()
        if row is None and not events:
            raise PlatformError("MaaS.0404", what=f"Service {service!r}")
        return [EventView(id=e.id, service_id=e.service_id, at=e.at, status=e.status, message=e.message,
                          notified=e.notified) for e in events]


# -- the product's service API (spec §4.6.1, "scheduled start/stop") -------------------------------------
mirror_router = APIRouter(prefix="/v1/{project_id}/maas/services", tags=["services"])


@mirror_router.get("/{service_id}", response_model=ServiceView)
async def mirror_get(project_id: ProjectId, service_id: str):
    return await get_service(project_id, service_id)


@mirror_router.post("/{service_id}", response_model=ServiceView)
async def mirror_action(project_id: ProjectId, service_id: str, spec: MirrorAction):
    if spec.action_type == "restart":
        return await start_service(project_id, service_id)
    return await stop_service(project_id, service_id)
