"""Custom endpoints (spec §4.4): a name of the project's own, with its own RPM and TPM, in front of one
service (a commercial preset the project activated, or one of its model services). Called with
`model=<endpoint name>`. Names are never reused, even after deletion; limits apply to the next request."""

from __future__ import annotations

import uuid

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cluster.endpoints.schemas import EndpointCreate, EndpointUpdate, EndpointView
from cluster.state.db import Endpoint, Preset, PresetGrant, Service, now
from cluster.state.lookup import lock_project, owned
from serve_apps.errors import PlatformError

MAX_LIVE_ENDPOINTS = 10


def _model_limits(session: Session, project_id: str, target: str) -> tuple[str, int | None, int | None]:
    """(target id, RPM cap, TPM cap) of what an endpoint may front; None means no cap."""
    preset = session.get(Preset, target)
    if preset is not None:
        if preset.kind != "commercial":
            raise PlatformError("MaaS.0400", reason="Custom endpoints front commercial services, not free ones.")
        if session.get(PresetGrant, (project_id, target)) is None:
            raise PlatformError("MaaS.0400", reason=f"Activate the commercial service {target!r} first.")
        return target, preset.rpm, preset.tpm
    service = owned(session, Service, project_id, target, "Service")
    return service.id, (service.qps * 60 if service.qps else None), None


def _check_limits(rpm: int, tpm: int, rpm_cap: int | None, tpm_cap: int | None) -> None:
    if rpm_cap is not None and rpm > rpm_cap:
        raise PlatformError("MaaS.0400", reason=f"rpm {rpm} exceeds the model's limit of {rpm_cap} for this project.")
    if tpm_cap is not None and tpm > tpm_cap:
        raise PlatformError("MaaS.0400", reason=f"tpm {tpm} exceeds the model's limit of {tpm_cap} for this project.")


def live(session: Session, project_id: str, name_or_id: str) -> Endpoint:
    return owned(session, Endpoint, project_id, name_or_id, "Endpoint", Endpoint.deleted_at.is_(None))


def create_endpoint(session: Session, project_id: str, spec: EndpointCreate) -> EndpointView:
    lock_project(session, project_id)  # parallel creates count one after another
    count = session.scalar(select(func.count()).select_from(Endpoint).where(
        Endpoint.project_id == project_id, Endpoint.deleted_at.is_(None)))
    if count >= MAX_LIVE_ENDPOINTS:
        raise PlatformError("MaaS.0400", reason=f"At most {MAX_LIVE_ENDPOINTS} custom endpoints can exist "
                                                "at once; delete one to create another.")
    if session.scalar(select(Endpoint.id).where(Endpoint.project_id == project_id, Endpoint.name == spec.name)):
        raise PlatformError("MaaS.0409", reason=f"The endpoint name {spec.name!r} is taken or was used "
                                                "before; names of deleted endpoints cannot be reused.")
    target, rpm_cap, tpm_cap = _model_limits(session, project_id, spec.service)
    rpm = spec.rpm or rpm_cap
    tpm = spec.tpm or tpm_cap
    if rpm is None or tpm is None:
        raise PlatformError("MaaS.0400", reason="This service has no model limit to default to: give rpm and tpm.")
    _check_limits(rpm, tpm, rpm_cap, tpm_cap)
    row = Endpoint(id="ep-" + uuid.uuid4().hex[:12], project_id=project_id, name=spec.name,
                   description=spec.description, target=target, rpm=rpm, tpm=tpm, enabled=True)
    session.add(row)
    session.flush()
    return EndpointView.of(row)


def list_endpoints(session: Session, project_id: str) -> list[EndpointView]:
    rows = session.scalars(select(Endpoint).where(Endpoint.project_id == project_id,
                                                  Endpoint.deleted_at.is_(None)).order_by(Endpoint.created_at))
    return [EndpointView.of(row) for row in rows]


def update_endpoint(session: Session, project_id: str, endpoint: str, spec: EndpointUpdate) -> EndpointView:
    row = live(session, project_id, endpoint)
    _target, rpm_cap, tpm_cap = _model_limits(session, project_id, row.target)
    rpm, tpm = spec.rpm or row.rpm, spec.tpm or row.tpm
    _check_limits(rpm, tpm, rpm_cap, tpm_cap)
    row.rpm, row.tpm = rpm, tpm
    if spec.description is not None:
        row.description = spec.description
    row.updated_at = now()
    session.flush()
    return EndpointView.of(row)


def set_enabled(session: Session, project_id: str, endpoint: str, enabled: bool) -> EndpointView:
    row = live(session, project_id, endpoint)
    if row.enabled == enabled:
        raise PlatformError("MaaS.0409", reason=f"The endpoint {row.name!r} is already "
                                                f"{'in use' if enabled else 'disabled'}.")
    row.enabled, row.updated_at = enabled, now()
    session.flush()
    return EndpointView.of(row)


def delete_endpoint(session: Session, project_id: str, endpoint: str) -> None:
    """Soft delete: the row stays, so the name is never used again."""
    row = live(session, project_id, endpoint)
    row.deleted_at = row.updated_at = now()
