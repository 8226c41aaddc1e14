"""Model services ("my services", spec §4.5 and §4.6): deploy a catalog model or a model of the project's own
as a service, then start, stop, scale, limit, upgrade and delete it. No HTTP here.

Only desired state (SQL) and the events of the changes are written here; the reconciler makes Ray Serve
match and derives the real status from Serve. Every action is checked against the status it is allowed
from (`lifecycle.ALLOWED_FROM`) and applied only if the status is still the one checked.
"""

from __future__ import annotations

import uuid
from typing import Callable

from sqlalchemy import select, update
from sqlalchemy.orm import Session, object_session

from cluster.runtime.accounting import reload_accounting
from cluster.my_models import registry
from cluster.projects import quotas as project_quotas
from cluster.runtime.events import Notification, record_event
from cluster.schemas import auto_stop_seconds, confirmation
from cluster.services import reconciler
from cluster.services.lifecycle import Action, Status, check_action
from cluster.services.schemas import (
    AutoscaleRequest,
    EventView,
    ScaleRequest,
    ServiceCreate,
    ServiceView,
    UpgradeRequest,
)
from cluster.settings import get_settings
from cluster.state.db import Service, ServiceEvent, now, session_scope
from cluster.state.lookup import find_owned, lock_project, owned
from serve_apps.catalog import builtin
from serve_apps.errors import PlatformError

check_scale_in = confirmation("YES", "Scaling in (fewer instances)")


def find(session: Session, project_id: str, service: str) -> Service:
    return owned(session, Service, project_id, service, "Service")


def view(row: Service) -> ServiceView:
    return ServiceView.of(row, reconciler.replicas(row.app_name), reconciler.target(row.app_name))


def most_instances(autoscale: str, instances: int, max_instances: int | None) -> int:
    """What a service may run at its peak: what the instances quota counts."""
    return instances if autoscale == "off" or max_instances is None else max_instances


async def after_change(notifications: list[Notification]) -> None:
    """Every committed change: the accounting actor reloads routes and limits, the reconciler wakes up and
    sends the event notifications."""
    await reload_accounting()
    reconciler.notify(notifications)
    reconciler.wake()


def create(session: Session, project_id: str, spec: ServiceCreate) -> tuple[ServiceView, Notification | None]:
    try:
        builtin(spec.model)
    except KeyError:  # not in the catalog: one of the project's own models (name or id), or nothing
        resolved = registry.resolve_version(session, project_id, spec.model, spec.model_version)
        if resolved.kind != "full":
            raise PlatformError("MaaS.0400", reason=(
                f"A LoRA version needs no service of its own: it is served on {resolved.base_model} as "
                f"{resolved.card.id!r} already.")) from None
        spec = spec.model_copy(update={"model": resolved.model_id, "model_version": str(resolved.version)})
    if session.scalar(select(Service.id).where(Service.project_id == project_id, Service.name == spec.name)):
        raise PlatformError("MaaS.0409", reason=f"A service named {spec.name!r} already exists in this project.")
    lock_project(session, project_id)  # parallel creates count one after another
    project_quotas.check_service(session, project_id, most_instances(spec.autoscale, spec.instances,
                                                                     spec.max_instances))
    options = spec.autoscale_options.model_dump(exclude_unset=True) if spec.autoscale_options else None
    row = Service(id=uuid.uuid4().hex, project_id=project_id, name=spec.name, description=spec.description,
                  model_id=spec.model, model_version=spec.model_version, instances=spec.instances, qps=spec.qps,
                  autoscale=spec.autoscale, min_instances=spec.min_instances, max_instances=spec.max_instances,
                  autoscale_options=options, max_batch=spec.max_batch, node_type=spec.node_type,
                  moderation=spec.moderation, notify_url=spec.notify_url,
                  notify_events=[s.value for s in spec.notify_events], auto_stop_s=auto_stop_seconds(spec.auto_stop),
                  desired="running", status=Status.PENDING.value, generation=1, app_name="")
    session.add(row)
    session.flush()
    note = record_event(session, row, Status.PENDING.value,
                        f"Created from {spec.model} version {spec.model_version}; queued.")
    return view(row), note


async def transition(project_id: str, service: str, action: Action, changes: Callable[[Service], dict],
                     message: str) -> ServiceView:
    """Check `action` against the current status, then apply `changes(row) -> dict` only if the status is
    still the one checked (the reconciler writes status concurrently)."""
    for _attempt in range(5):
        with session_scope(get_settings().database_url) as session:
            row = find(session, project_id, service)
            check_action(row.name, row.status, action)
            values = changes(row) | {"updated_at": now()}
            done = session.execute(update(Service).where(Service.id == row.id, Service.status == row.status)
                                   .values(**values))
            if done.rowcount != 1:
                continue
            session.expire(row)
            session.refresh(row)
            note = record_event(session, row, values.get("status", row.status), message.format(row=row),
                                status_changed="status" in values)
            result = view(row)
        await after_change([note] if note else [])
        return result
    raise PlatformError("MaaS.0409", reason=f"The service {service!r} is changing status; try again.")


# -- what each action changes ----------------------------------------------------------------------------
def check_instances(row: Service, instances: int) -> None:
    """`row` running `instances` fits the project's instances quota: counted in the transition's own transaction,
    under the project's lock, so that parallel starts, scales and creates count one after another."""
    session = object_session(row)
    lock_project(session, row.project_id)
    project_quotas.check_service(session, row.project_id, instances, replacing=row)


def start_changes(row: Service) -> dict:
    """A start brings the service's instances up again (a stopped service counts none): they must fit."""
    check_instances(row, most_instances(row.autoscale or "off", row.instances, row.max_instances))
    return {"desired": "running", "status": Status.PENDING.value, "status_reason": "", "run_seconds": 0,
            "running_since": None}


def stop_changes(_row: Service) -> dict:
    return {"desired": "stopped", "status": Status.TERMINATING.value, "status_reason": ""}


def delete_changes(_row: Service) -> dict:
    return {"desired": "deleted", "status": Status.DELETING.value, "status_reason": ""}


def scale_changes(spec: ScaleRequest) -> Callable[[Service], dict]:
    def changes(row: Service) -> dict:
        if (row.autoscale or "off") != "off":
            raise PlatformError("MaaS.0409", reason=f"The service {row.name!r} autoscales ({row.autoscale}, "
                                                    f"{row.min_instances}-{row.max_instances} instances): change "
                                                    "its bounds with autoscale, or turn it off there.")
        if spec.instances == row.instances:
            raise PlatformError("MaaS.0409", reason=f"The service {row.name!r} already has {row.instances} "
                                                    f"instance{'s' * (row.instances != 1)}.")
        if spec.instances < row.instances:
            check_scale_in(spec.confirm)
        else:
            check_instances(row, spec.instances)
        return {"instances": spec.instances, "status": Status.SCALE.value, "status_reason": ""}

    return changes


def autoscale_changes(spec: AutoscaleRequest) -> Callable[[Service], dict]:
    def changes(row: Service) -> dict:
        instances = spec.instances or row.instances
        options = spec.autoscale_options.model_dump(exclude_unset=True) if spec.autoscale_options else None
        values = {"autoscale": spec.autoscale, "min_instances": spec.min_instances,
                  "max_instances": spec.max_instances, "autoscale_options": options, "instances": instances}
        if all(getattr(row, k) == v for k, v in values.items()):
            raise PlatformError("MaaS.0409", reason=f"The service {row.name!r} already scales that way.")
        check_instances(row, most_instances(spec.autoscale, instances, spec.max_instances))
        return values | {"status": Status.SCALE.value, "status_reason": ""}

    return changes


def autoscale_message(spec: AutoscaleRequest) -> str:
    """The event of an autoscale change (a `transition` message: {row.*} is filled in after the change)."""
    if spec.autoscale == "off":
        return "Autoscaling off: {row.instances} instances, fixed."
    return f"Autoscaling {spec.autoscale} between {spec.min_instances} and {spec.max_instances} instances."


def upgrade_changes(project_id: str, spec: UpgradeRequest) -> Callable[[Service], dict]:
    def changes(row: Service) -> dict:
        version = spec.model_version
        if row.model_id.startswith("mdl-"):  # one of the project's models: the version must exist and be full
            with session_scope(get_settings().database_url) as session:
                resolved = registry.resolve_version(session, project_id, row.model_id, version)
            if resolved.kind != "full":
                raise PlatformError("MaaS.0400", reason=f"Version {version!r} is a LoRA adapter: it is served on "
                                                        f"{resolved.base_model} as {resolved.card.id!r}.")
            version = str(resolved.version)
        if version == row.model_version:
            raise PlatformError("MaaS.0409", reason=f"The service {row.name!r} already runs version "
                                                    f"{row.model_version!r}.")
        return {"model_version": version, "previous_version": row.model_version,
                "generation": row.generation + 1, "status": Status.UPGRADE.value, "status_reason": ""}

    return changes


def events(session: Session, project_id: str, service: str) -> list[EventView]:
    """Newest first, 30 days. A deleted service's events stay listable by its id."""
    row = find_owned(session, Service, project_id, service)
    service_id = row.id if row is not None else service
    rows = session.scalars(select(ServiceEvent).where(ServiceEvent.project_id == project_id,
                                                      ServiceEvent.service_id == service_id)
                           .order_by(ServiceEvent.id.desc())).all()
    if row is None and not rows:
        raise PlatformError("MaaS.0404", what=f"Service {service!r}")
    return [EventView(id=e.id, service_id=e.service_id, at=e.at, status=e.status, message=e.message,
                      notified=e.notified) for e in rows]
