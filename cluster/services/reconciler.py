"""The reconciler: makes Ray Serve match the services' desired state in SQL, and reports what Serve says.

It runs as a thread inside the control plane's replica, every `INTERVAL_S` and whenever the API wakes it.
Each pass reads Serve's state once (`serve_details`), decides per service with a pure function
(`decide`, services/lifecycle.py), commits the new status only if the row did not change meanwhile
(compare-and-set), then acts on Serve:

- one Serve application per service generation, `svc-<id>-g<generation>`, engine deployment
  `engine-<model>` with min = max replicas = instances. The deployment's code version is pinned to the
  application name, so a new instance count is a lightweight update: existing replicas keep serving.
- an upgrade bumps the generation: the new application deploys beside the old one, calls switch to it
  (`Service.app_name`, then the accounting actor reloads) once it is RUNNING, and only then is the old
  one deleted.
- an application that is missing while the service should run (platform or Ray cluster restarted) is
  deployed again; Serve itself replaces a replica that dies, and the service shows Concerning meanwhile.

A thread rather than an asyncio task: every Serve and SQL call here blocks, and the API's event loop
must not wait on them.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace

from sqlalchemy import delete, select, update

from autoscaling.builder import policy_name
from cluster.runtime.accounting import reload_accounting_blocking
from cluster.my_models import registry
from cluster.runtime.events import Notification, deliver, loop_trouble, record_event
from cluster.runtime.health import loop_health
from cluster.services.scaling import ScalingEvents
from cluster.services.lifecycle import (APP_PREFIX, AppState, Decision, Snapshot, Status, decide, deletable,
                                        scaling_key, service_id_of, upgrade_failed)
from cluster.settings import get_settings
from cluster.state.db import Service, ServiceEvent, now, session_scope
from serve_apps import ray_compat

log = logging.getLogger("maas.reconciler")
INTERVAL_S = 2.0
EVENT_RETENTION_S = 30 * 86400


def _value(enum_or_str) -> str:
    return getattr(enum_or_str, "value", enum_or_str)


def serve_details() -> dict[str, AppState]:
    """Every service application Serve knows, with its engine replicas (one controller call)."""
    from ray.serve.schema import ServeInstanceDetails

    raw = ray_compat.serve_details()
    if raw is None:
        return {}
    details = ServeInstanceDetails(**raw)
    apps = {}
    for name, app in details.applications.items():
        if not name.startswith(APP_PREFIX):
            continue
        deployment = next(iter(app.deployments.values()), None)
        instances, replicas, dep_status, scaling, target = None, (), "", None, None
        if deployment is not None:
            dep_status = _value(deployment.status)
            auto = deployment.deployment_config.autoscaling_config
            auto = auto if isinstance(auto, dict) or auto is None else auto.model_dump()
            instances = (auto or {}).get("min_replicas", deployment.target_num_replicas)
            replicas = tuple((r.replica_id, _value(r.state)) for r in deployment.replicas)
            target = deployment.target_num_replicas
            if auto:
                policy = auto.get("policy") or {}
                options = (policy.get("policy_kwargs") or {}).get("options") if isinstance(policy, dict) else None
                scaling = scaling_key(policy_name(auto), auto.get("min_replicas"), auto.get("max_replicas"), options)
        apps[name] = AppState(name=name, status=_value(app.status), message=app.message or "",
                              deployment_status=dep_status, instances=instances, replicas=replicas,
                              scaling=scaling, target=target)
    return apps


# -- the loop ----------------------------------------------------------------------------------------------
class _Changed(Exception):
    """The row changed between reading and writing: decide again on the next pass."""


class Reconciler(threading.Thread):
    def __init__(self, database_url: str):
        super().__init__(name="maas-reconciler", daemon=True)
        self.url = database_url
        self.woken = threading.Event()
        self.replicas: dict[str, list[dict]] = {}
        self.targets: dict[str, int | None] = {}
        self.decisions = ScalingEvents()
        self.health = loop_health("reconciler")
        self._pruned_at = 0.0
        self._troubles: dict[str, str] = {}  # service id -> the trouble last written on it

    def run(self) -> None:
        while True:
            self.woken.clear()
            try:
                self.reconcile_once()
                self.health.ok()
            except Exception as exc:  # a bad pass must not end the loop; the next one starts from fresh state
                log.exception("reconcile pass failed")
                self.health.failed(exc)
            self.woken.wait(INTERVAL_S)

    def post(self, notifications: list[Notification]) -> None:
        """Hand notifications to the webhook sender (its own thread: a slow webhook never holds this loop)."""
        deliver(self.url, notifications)

    def reconcile_once(self) -> None:
        apps = serve_details()
        self.replicas = {name: [{"id": rid, "state": state} for rid, state in app.replicas]
                         for name, app in apps.items()}
        self.targets = {name: app.target for name, app in apps.items()}
        self.post(self.decisions.record(self.url, apps))
        by_service: dict[str, dict[str, AppState]] = {}
        for name, app in apps.items():
            by_service.setdefault(service_id_of(name) or "", {})[name] = app
        at = now()
        with session_scope(self.url) as session:
            snapshots = [Snapshot.of(row) for row in session.scalars(select(Service))]
        for snap in snapshots:
            try:
                decision = decide(snap, by_service.pop(snap.id, {}), at)
                if self._commit(snap, decision):
                    self._act(snap, decision)
                self._troubles.pop(snap.id, None)
            except Exception as exc:  # one service's trouble must not hold the others
                log.exception("reconciling service %s failed", snap.id)
                self.health.failed(exc, f"service {snap.id}")
                self._trouble(snap, exc)
        for orphans in by_service.values():  # applications of services that no longer exist
            for name in deletable(orphans):
                _delete_app(name)
        if time.time() - self._pruned_at > 60:
            with session_scope(self.url) as session:
                session.execute(delete(ServiceEvent).where(ServiceEvent.at < at - EVENT_RETENTION_S))
            self._pruned_at = time.time()

    def _trouble(self, snap: Snapshot, exc: Exception) -> None:
        """Write the failure on the service, as an event (once per kind of failure, not every pass)."""
        message = loop_trouble(exc, "bring this service to its desired state")
        if self._troubles.get(snap.id) == message:
            return
        self._troubles[snap.id] = message
        try:
            with session_scope(self.url) as session:
                row = session.get(Service, snap.id)
                if row is not None:
                    record_event(session, row, row.status, message, status_changed=False)
        except Exception:  # the database itself is the trouble: /health and the log have it
            log.exception("recording the trouble of service %s failed", snap.id)

    def _commit(self, snap: Snapshot, decision: Decision) -> bool:
        """Write the decision if the row is as it was read; False if it changed meanwhile."""
        values = dict(decision.changes)
        if decision.status != snap.status:
            values["status"] = decision.status
        if decision.reason is not None and decision.reason != snap.status_reason:
            values["status_reason"] = decision.reason
        if not values and not decision.remove_row:
            return True
        unchanged = (Service.id == snap.id, Service.desired == snap.desired, Service.status == snap.status,
                     Service.generation == snap.generation, Service.instances == snap.instances,
                     Service.app_name == snap.app_name)
        try:
            with session_scope(self.url) as session:
                row = session.get(Service, snap.id)
                if row is None:
                    raise _Changed
                note = None
                if decision.remove_row:
                    note = record_event(session, row, Status.DELETED.value, "Deleted.")
                elif "status" in values:
                    reason = snap.status_reason if decision.reason is None else decision.reason
                    note = record_event(session, row, decision.status,
                                        reason or f"{snap.status} -> {decision.status}.")
                statement = delete(Service) if decision.remove_row else update(Service).values(**values)
                if session.execute(statement.where(*unchanged).execution_options(
                        synchronize_session=False)).rowcount != 1:
                    raise _Changed
        except _Changed:
            return False
        if note:
            self.post([note])
        if decision.remove_row or {"status", "app_name"} & set(values):
            _reload_accounting()  # before any application is retired, calls go to the one now serving
        return True

    def _act(self, snap: Snapshot, decision: Decision) -> None:
        for name in decision.delete:
            _delete_app(name)
        if decision.deploy is None:
            return
        try:
            _deploy(replace(snap, status=decision.status), decision.deploy)
        except Exception as exc:
            log.exception("deploying %s failed", decision.deploy)
            values = {"status": Status.FAILED.value, "status_reason": f"Deploy failed: {exc}"[:1024]}
            if decision.status == Status.UPGRADE.value and snap.app_name and snap.app_name != decision.deploy:
                back = upgrade_failed(snap, snap.app_name, str(exc))  # the old version still serves
                values = {"status": back.status, "status_reason": back.reason, **back.changes}
            with session_scope(self.url) as session:
                session.execute(update(Service).where(Service.id == snap.id, Service.status == decision.status)
                                .values(**values))
                row = session.get(Service, snap.id)
                note = row and record_event(session, row, values["status"], values["status_reason"])
            if note:
                self.post([note])
            _reload_accounting()


def _deploy(snap: Snapshot, name: str) -> None:
    from ray import serve
    from ray.serve.api import RunTarget

    from serve_apps.catalog import builtin, ensure_built
    from serve_apps.model_app import ModelServiceSpec, build_model_app

    settings = get_settings()
    if snap.model_id.startswith("mdl-"):  # a version of one of the project's own models
        with session_scope(settings.database_url) as session:
            resolved = registry.resolve_version(session, snap.project_id, snap.model_id, snap.model_version)
        model, path = resolved.card, resolved.path
        if not (path / "config.json").is_file():  # removed, or storage not mounted: no engine could load it
            raise FileNotFoundError(f"The weights of version {resolved.version} are missing from {path}.")
    else:
        model = builtin(snap.model_id)
        path = ensure_built(model, settings.models_dir)
    low, high = snap.bounds
    mode = snap.autoscale if snap.max_instances is not None else "off"
    spec = ModelServiceSpec(model=model, model_path=str(path), app_name=name, min_replicas=low, max_replicas=high,
                            autoscale=mode, autoscale_options=snap.autoscale_options or {},
                            max_batch=snap.max_batch, accelerator=settings.accelerator, node_type=snap.node_type)
    # Pinned code version: a new instance count then leaves the running replicas alone.
    application = ray_compat.pin_code_version(build_model_app(spec), name)
    serve.run_many([RunTarget(target=application, name=name, route_prefix=None)],
                   wait_for_ingress_deployment_creation=False, wait_for_applications_running=False)
    log.info("deployed %s with %d-%d instance(s), autoscale %s, node type %s", name, low, high, mode,
             snap.node_type or "any")


def _delete_app(name: str) -> None:
    ray_compat.delete_app_nowait(name)
    log.info("deleting %s", name)


def _reload_accounting() -> None:
    reload_accounting_blocking(log)


# -- the process's reconciler ---------------------------------------------------------------------------
_current: Reconciler | None = None


def start(database_url: str) -> Reconciler:
    """Start this process's reconciler (once); the control plane's replica calls it on start."""
    global _current
    if _current is None or not _current.is_alive():
        _current = Reconciler(database_url)
        _current.start()
    return _current


def wake() -> None:
    if _current is not None:
        _current.woken.set()


def notify(notifications: list[Notification]) -> None:
    if notifications:
        deliver(get_settings().database_url, notifications)


def replicas(name: str) -> list[dict]:
    """The engine replicas of a service application, as the last pass saw them."""
    return list(_current.replicas.get(name, [])) if _current is not None and name else []


def target(name: str) -> int | None:
    """The replica count Serve aims for in a service application, as the last pass saw it."""
    return _current.targets.get(name) if _current is not None and name else None
