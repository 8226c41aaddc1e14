"""Custom endpoints (spec §4.4): a name of the project's own, with its own RPM and TPM, in front of one
service (a commercial preset the project activated, or one of its model services). Called with
`model=<endpoint name>`. Names are never reused, even after deletion; limits apply to the next request.
"""

from __future__ import annotations

import re
import uuid

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import func, or_, select

from cluster.db import MAX_BIGINT, Endpoint, Preset, PresetGrant, Service, now, session_scope
from cluster.deps import ProjectId, database_url, reload_accounting
from serve_apps.errors import PlatformError

MAX_LIVE_ENDPOINTS = 10
_NAME = re.compile(r"^[\w-]{1,64}$")  # \w: letters of any script (CJK included), digits, underscore
router = APIRouter(prefix="/v1/{project_id}/endpoints", tags=["endpoints"])


def _check_name(value: str) -> str:
    if not _NAME.match(value):
        raise ValueError("name must be 1-64 letters, digits, _ or -, with no other characters")
    return value


class EndpointUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")  # the service an endpoint fronts cannot be changed
    description: str | None = Field(None, max_length=256)
    rpm: int | None = Field(None, gt=0, le=MAX_BIGINT)
    tpm: int | None = Field(None, gt=0, le=MAX_BIGINT)


class EndpointCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="1-64 letters, digits, _ or -; unique in the project, forever.")
    service: str = Field(description="A commercial preset the project activated, or a service id or name.")
    description: str = Field("", max_length=256)
    rpm: int | None = Field(None, gt=0, le=MAX_BIGINT, description="Default: the model's limit for the project.")
    tpm: int | None = Field(None, gt=0, le=MAX_BIGINT, description="Default: the model's limit for the project.")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _check_name(value)


class EndpointView(BaseModel):
    id: str
    project_id: str
    name: str
    description: str
    service: str
    rpm: int
    tpm: int
    status: str = Field(description="in_use or disabled")
    created_at: int
    updated_at: int

    @classmethod
    def of(cls, row: Endpoint) -> "EndpointView":
        return cls(id=row.id, project_id=row.project_id, name=row.name, description=row.description,
                   service=row.target, rpm=row.rpm, tpm=row.tpm, status="in_use" if row.enabled else "disabled",
                   created_at=row.created_at, updated_at=row.updated_at)


def _model_limits(session, project_id: str, target: str) -> tuple[str, int | None, int | None]:
    """(target id, RPM cap, TPM cap) of what an endpoint may front; None means no cap."""
    preset = session.get(Preset, target)
    if preset is not None:
        if preset.kind != "commercial":
            raise PlatformError("MaaS.0400", reason="Custom endpoints front commercial services, not free ones.")
        if session.get(PresetGrant, (project_id, target)) is None:
            raise PlatformError("MaaS.0400", reason=f"Activate the commercial service {target!r} first.")
        return target, preset.rpm, preset.tpm
    service = session.scalar(select(Service).where(Service.project_id == project_id,
                                                   or_(Service.id == target, Service.name == target)))
    if service is None:
        raise PlatformError("MaaS.0404", what=f"Service {target!r}")
    return service.id, (service.qps * 60 if service.qps else None), None


def _check_limits(rpm: int, tpm: int, rpm_cap: int | None, tpm_cap: int | None) -> None:
    if rpm_cap is not None and rpm > rpm_cap:
        raise PlatformError("MaaS.0400", reason=f"rpm {rpm} exceeds the model's limit of {rpm_cap} for this project.")
    if tpm_cap is not None and tpm > tpm_cap:
        raise PlatformError("MaaS.0400", reason=f"tpm {tpm} exceeds the model's limit of {tpm_cap} for this project.")


def _live(session, project_id: str, name_or_id: str) -> Endpoint:
    row = session.scalar(select(Endpoint).where(
        Endpoint.project_id == project_id, Endpoint.deleted_at.is_(None),
        or_(Endpoint.id == name_or_id, Endpoint.name == name_or_id)))
    if row is None:
        raise PlatformError("MaaS.0404", what=f"Endpoint {name_or_id!r}")
    return row


@router.post("", status_code=201, response_model=EndpointView)
async def create_endpoint(project_id: ProjectId, spec: EndpointCreate):
    with session_scope(database_url()) as session:
        live = session.scalar(select(func.count()).select_from(Endpoint).where(
            Endpoint.project_id == project_id, Endpoint.deleted_at.is_(None)))
        if live >= MAX_LIVE_ENDPOINTS:
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
        view = EndpointView.of(row)
    await reload_accounting()
    return view


@router.get("", response_model=list[EndpointView])
async def list_endpoints(project_id: ProjectId):
    with session_scope(database_url()) as session:
        rows = session.scalars(select(Endpoint).where(Endpoint.project_id == project_id,
                                                      Endpoint.deleted_at.is_(None)).order_by(Endpoint.created_at))
        return [EndpointView.of(row) for row in rows]


@router.get("/{endpoint}", response_model=EndpointView)
async def get_endpoint(project_id: ProjectId, endpoint: str):
    with session_scope(database_url()) as session:
        return EndpointView.of(_live(session, project_id, endpoint))


@router.patch("/{endpoint}", response_model=EndpointView)
async def update_endpoint(project_id: ProjectId, endpoint: str, spec: EndpointUpdate):
    """Description and limits; the service an endpoint fronts never changes."""
    with session_scope(database_url()) as session:
        row = _live(session, project_id, endpoint)
        _target, rpm_cap, tpm_cap = _model_limits(session, project_id, row.target)
        rpm, tpm = spec.rpm or row.rpm, spec.tpm or row.tpm
        _check_limits(rpm, tpm, rpm_cap, tpm_cap)
        row.rpm, row.tpm = rpm, tpm
        if spec.description is not None:
            row.description = spec.description
        row.updated_at = now()
        session.flush()
        view = EndpointView.of(row)
    await reload_accounting()
    return view


class Confirm(BaseModel):
    confirm: str = Field("", description="The confirmation word the action needs (disable: YES, delete: DELETE).")


async def _set_enabled(project_id: str, endpoint: str, enabled: bool) -> EndpointView:
    with session_scope(database_url()) as session:
        row = _live(session, project_id, endpoint)
        if row.enabled == enabled:
            raise PlatformError("MaaS.0409", reason=f"The endpoint {row.name!r} is already "
                                                    f"{'in use' if enabled else 'disabled'}.")
        row.enabled, row.updated_at = enabled, now()
        session.flush()
        view = EndpointView.of(row)
    await reload_accounting()
    return view


@router.post("/{endpoint}/disable", response_model=EndpointView)
async def disable_endpoint(project_id: ProjectId, endpoint: str, spec: Confirm):
    if spec.confirm != "YES":
        raise PlatformError("MaaS.0400", reason="Disabling an endpoint needs the confirmation text YES.")
    return await _set_enabled(project_id, endpoint, False)


@router.post("/{endpoint}/enable", response_model=EndpointView)
async def enable_endpoint(project_id: ProjectId, endpoint: str):
    return await _set_enabled(project_id, endpoint, True)


@router.delete("/{endpoint}", status_code=204)
async def delete_endpoint(project_id: ProjectId, endpoint: str, confirm: str = ""):
    if confirm != "DELETE":
        raise PlatformError("MaaS.0400", reason="Deleting an endpoint needs the confirmation text DELETE.")
    with session_scope(database_url()) as session:
        row = _live(session, project_id, endpoint)
        row.deleted_at = row.updated_at = now()
    await reload_accounting()
