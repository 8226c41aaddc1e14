"""What a service should turn into, as a pure function of its row and what Serve reports (`decide`).

No Ray, no SQL here: the reconciler (cluster/reconciler.py) reads both, calls `decide` for each service and
carries out the `Decision` (status to commit, application to deploy, applications to delete). Keeping it pure
keeps every rule of the lifecycle testable without an engine (tests/test_services.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cluster.db import Service
from cluster.services import Status

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
    instances: int | None = None  # the replica count it is configured for
    replicas: tuple[tuple[str, str], ...] = ()  # (replica id, ReplicaState)

    @property
    def running(self) -> int:
        return sum(state == "RUNNING" for _id, state in self.replicas)


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

    @classmethod
    def of(cls, row: Service) -> "Snapshot":
        return cls(id=row.id, name=row.name, model_id=row.model_id, desired=row.desired, status=row.status,
                   generation=row.generation, instances=row.instances, app_name=row.app_name,
                   running_since=row.running_since, run_seconds=row.run_seconds, auto_stop_s=row.auto_stop_s,
                   status_reason=row.status_reason, project_id=row.project_id, model_version=row.model_version,
                   previous_version=row.previous_version)


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
    resize = target if app.instances != snap.instances and app.status != "DEPLOY_FAILED" else None
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
        if snap.status == Status.SCALE.value and app.running != snap.instances:
            return Decision(Status.SCALE.value, "", changes=changes, delete=stale)
        if app.running < snap.instances:
            return Decision(Status.CONCERNING.value, f"{app.running} of {snap.instances} instances running; "
                                                     "replacing the others.", changes=changes, delete=stale)
        return Decision(Status.RUNNING.value, "", changes=changes, delete=stale)
    if serving:
        return Decision(Status.UPGRADE.value, "", deploy=resize, delete=stale)
    changes = {} if snap.app_name == target or not app.running else {"app_name": target}
    if app.running:
        if resize or snap.status == Status.SCALE.value or app.deployment_status in ("UPSCALING", "DOWNSCALING"):
            return Decision(Status.SCALE.value, "", changes=changes, deploy=resize, delete=stale)
        return Decision(Status.CONCERNING.value, (app.message or f"{app.running} of {snap.instances} instances "
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
    counted = decision.status in COUNTED
    if counted and snap.running_since is None:
        decision.changes["running_since"] = at
    elif not counted and snap.running_since is not None:
        decision.changes["running_since"] = None
        decision.changes["run_seconds"] = snap.run_seconds + max(at - snap.running_since, 0)
    return decision
