"""A service's lifecycle as data and pure functions: its statuses, which action is allowed from which
status (`ALLOWED_FROM`, checked in one place), and what a service should turn into given its row and what
Serve reports (`decide`).

No Ray, no SQL here: the reconciler (services/reconciler.py) reads both, calls `decide` for each service and
carries out the `Decision` (status to commit, application to deploy, applications to delete). Keeping it pure
keeps every rule of the lifecycle testable without an engine (tests/unit/test_service_lifecycle.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import Enum

from autoscaling.config import LLMPolicyOptions
from cluster.runtime.running_time import count_running
from cluster.state.db import Service
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



APP_PREFIX = "svc-"
# Statuses whose time counts toward auto-stop (queued or starting time does not).
COUNTED = {Status.RUNNING.value, Status.CONCERNING.value, Status.SCALE.value, Status.UPGRADE.value}


def app_name(service_id: str, generation: int) -> str:
    return f"{APP_PREFIX}{service_id}-g{generation}"


def service_id_of(name: str) -> str | None:
    if not name.startswith(APP_PREFIX) or "-g" not in name:
        return None
    return name[len(APP_PREFIX):].rsplit("-g", 1)[0]


# -- what Serve says ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AppState:
    """One service application as Serve reports it (its single engine deployment)."""

    name: str
    status: str  # ApplicationStatus: NOT_STARTED, DEPLOYING, DEPLOY_FAILED, RUNNING, UNHEALTHY, DELETING
    message: str = ""
    deployment_status: str = ""  # DeploymentStatus: UPDATING, HEALTHY, UNHEALTHY, UPSCALING, ...
    instances: int | None = None  # the replica count it is configured for (autoscaled: its minimum)
    replicas: tuple[tuple[str, str], ...] = ()  # (replica id, ReplicaState)
    scaling: tuple | None = None  # scaling_key() of its autoscaling config; None: a fixed `instances`
    target: int | None = None  # the replica count Serve aims for now

    @property
    def running(self) -> int:
        return sum(state == "RUNNING" for _id, state in self.replicas)

    @property
    def scaling_key(self) -> tuple:
        return self.scaling if self.scaling is not None else scaling_key("off", self.instances, self.instances)


def scaling_key(mode: str, low: int | None, high: int | None, options: dict | None = None) -> tuple:
    """How a deployment scales, comparable between a service row and Serve's config (a requests policy with
    min = max is a fixed count; the llm policy's options count with their defaults)."""
    if mode != "llm" and low == high:
        return ("off", low, low, "")
    if mode != "llm":
        return (mode, low, high, "")
    return (mode, low, high, json.dumps(LLMPolicyOptions(**(options or {})).model_dump(), sort_keys=True))


# -- deciding ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Snapshot:
    """The fields of a service row a decision reads; a commit applies only if they are unchanged."""

    id: str
    name: str
    model_id: str
    desired: str
    status: str
    generation: int
    instances: int
    app_name: str
    running_since: int | None
    run_seconds: int
    auto_stop_s: int | None
    status_reason: str = ""
    project_id: str = ""
    model_version: str = "1"
    previous_version: str | None = None
    autoscale: str = "off"
    min_instances: int | None = None
    max_instances: int | None = None
    autoscale_options: dict | None = field(default=None, hash=False)
    max_batch: int | None = None
    node_type: str | None = None

    @classmethod
    def of(cls, row: Service) -> "Snapshot":
        return cls(id=row.id, name=row.name, model_id=row.model_id, desired=row.desired, status=row.status,
                   generation=row.generation, instances=row.instances, app_name=row.app_name,
                   running_since=row.running_since, run_seconds=row.run_seconds, auto_stop_s=row.auto_stop_s,
                   status_reason=row.status_reason, project_id=row.project_id, model_version=row.model_version,
                   previous_version=row.previous_version, autoscale=row.autoscale or "off",
                   min_instances=row.min_instances, max_instances=row.max_instances,
                   autoscale_options=row.autoscale_options, max_batch=row.max_batch, node_type=row.node_type)

    @property
    def bounds(self) -> tuple[int, int]:
        """(fewest, most) engine replicas: the fixed count when autoscale is off."""
        if self.autoscale == "off" or self.max_instances is None:
            return self.instances, self.instances
        return self.min_instances or 0, self.max_instances

    @property
    def scaling_key(self) -> tuple:
        low, high = self.bounds
        return scaling_key(self.autoscale if self.max_instances is not None else "off", low, high,
                           self.autoscale_options)


@dataclass
class Decision:
    status: str
    reason: str | None  # None: keep the current one
    changes: dict = field(default_factory=dict)  # other columns to write
    deploy: str | None = None  # application to serve.run (new, or a new instance count)
    delete: list[str] = field(default_factory=list)
    remove_row: bool = False


def deletable(apps: dict[str, AppState], keep: set[str] = frozenset()) -> list[str]:
    return sorted(n for n, a in apps.items() if n not in keep and a.status != "DELETING")


def decide(snap: Snapshot, apps: dict[str, AppState], at: int) -> Decision:
    """What the service's status is and what to do, from its desired state and its applications in Serve."""
    if snap.desired == "deleted":
        return Decision(Status.DELETING.value, "", delete=deletable(apps), remove_row=not apps)
    if snap.desired == "stopped" or snap.status == Status.FAILED.value:
        status = snap.status if snap.status == Status.FAILED.value else (
            Status.TERMINATING.value if apps else Status.TERMINATED.value)
        decision = Decision(status, None, delete=deletable(apps))  # None: keep the reason (of a failure)
        if status == Status.TERMINATED.value:
            decision.changes["app_name"] = ""
        return _count_running(snap, decision, at)
    decision = _decide_running(snap, apps)
    decision = _count_running(snap, decision, at)
    if snap.auto_stop_s and decision.changes.get("running_since", snap.running_since) is not None:
        ran = decision.changes.get("run_seconds", snap.run_seconds) + at - decision.changes.get(
            "running_since", snap.running_since)
        if ran >= snap.auto_stop_s:
            stopped = Decision(Status.TERMINATING.value, f"Auto-stopped after {ran} s of running time.",
                               changes={"desired": "stopped"}, delete=deletable(apps))
            return _count_running(snap, stopped, at)
    return decision


def _decide_running(snap: Snapshot, apps: dict[str, AppState]) -> Decision:
    target = app_name(snap.id, snap.generation)
    serving = snap.app_name if snap.app_name in apps and snap.app_name != target else None
    app = apps.get(target)
    stale = deletable(apps, keep={target, serving} if serving else {target})
    if app is None:
        if serving:
            return Decision(Status.UPGRADE.value, "", deploy=target, delete=stale)
        vanished = snap.status in COUNTED or snap.status == Status.RESTARTING.value
        status = Status.RESTARTING if vanished else Status.DEPLOYING
        reason = "The Serve application was gone; deploying it again." if vanished else ""
        return Decision(status.value, reason, deploy=target, delete=stale)
    if app.status == "DELETING":  # stopped and started again quickly: wait for the old one to go
        return Decision(snap.status, None, delete=stale)
    resize = target if app.scaling_key != snap.scaling_key and app.status != "DEPLOY_FAILED" else None
    floor = snap.bounds[0]  # autoscaled: fewer than the target is the autoscaler's business, not an alarm
    expected = snap.instances if snap.autoscale == "off" else max(floor, app.target or 0)
    if app.status == "DEPLOY_FAILED":
        if serving and apps[serving].status == "RUNNING":
            decision = upgrade_failed(snap, serving, app.message)
            decision.delete = [target, *stale]
            return decision
        return Decision(Status.FAILED.value, (app.message or "The deployment failed.")[:1024],
                        delete=deletable(apps))
    if app.status == "RUNNING" and not resize:
        if serving:  # upgrade done: switch calls to the new application, then retire the old one
            return Decision(Status.RUNNING.value, "", changes={"app_name": target}, delete=[serving, *stale])
        changes = {} if snap.app_name == target else {"app_name": target}
        if snap.status == Status.SCALE.value and app.running != expected:
            return Decision(Status.SCALE.value, "", changes=changes, delete=stale)
        if app.running < floor:
            return Decision(Status.CONCERNING.value, f"{app.running} of {floor} instances running; "
                                                     "replacing the others.", changes=changes, delete=stale)
        return Decision(Status.RUNNING.value, "", changes=changes, delete=stale)
    if serving:
        return Decision(Status.UPGRADE.value, "", deploy=resize, delete=stale)
    changes = {} if snap.app_name == target or not app.running else {"app_name": target}
    if app.running:
        if resize or snap.status == Status.SCALE.value or app.deployment_status in ("UPSCALING", "DOWNSCALING"):
            return Decision(Status.SCALE.value, "", changes=changes, deploy=resize, delete=stale)
        if snap.autoscale != "off" and app.running >= floor:  # the autoscaler adds or removes a replica
            return Decision(Status.RUNNING.value, "", changes=changes, delete=stale)
        return Decision(Status.CONCERNING.value, (app.message or f"{app.running} of {floor} instances "
                                                 "running.")[:1024], changes=changes, deploy=resize, delete=stale)
    if app.status == "UNHEALTHY":
        return Decision(Status.CONCERNING.value, (app.message or "Unhealthy.")[:1024], deploy=resize, delete=stale)
    status = Status.RESTARTING if snap.status == Status.RESTARTING.value else Status.DEPLOYING
    return Decision(status.value, None, deploy=resize, delete=stale)


def upgrade_failed(snap: Snapshot, serving: str, why: str) -> Decision:
    """The new version failed (Serve reports DEPLOY_FAILED, or it could not even be deployed) while `serving`
    still answers: back to that generation and its version, so that a later restart (of the service or of a
    lost application) deploys what serves now and the upgrade can be tried again."""
    return Decision(Status.CONCERNING.value, f"Upgrade failed, the previous version keeps serving: {why}"[:1024],
                    changes={"generation": int(serving.rsplit("-g", 1)[1]),
                             "model_version": snap.previous_version or snap.model_version})


def _count_running(snap: Snapshot, decision: Decision, at: int) -> Decision:
    """Running time for auto-stop: from entering a counted status to leaving it."""
    decision.changes.update(count_running(decision.status in COUNTED, snap.run_seconds, snap.running_since, at))
    return decision
