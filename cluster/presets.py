"""Preset services (spec §4.2–4.3): the platform's own models, offered free (until an expiry time, or up to a
claimable token quota) or commercially (a project activates them once and for all, with model-level RPM
and TPM per project). The admin sets the offer; projects activate, claim, and list what they have.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field, model_validator
from sqlalchemy import select

from cluster.db import MAX_BIGINT, Preset, PresetGrant, ServedModel, session_scope
from cluster.deps import Admin, ProjectId, database_url, reload_accounting
from serve_apps.errors import PlatformError

DEFAULT_RPM = 10_000  # generous defaults for a self-hosted platform; an admin tightens them per model
DEFAULT_TPM = 10_000_000
router = APIRouter(prefix="/v1", tags=["presets"])


class PresetSpec(BaseModel):
    kind: Literal["free", "commercial"]
    expires_at: int | None = Field(None, description="Free mode 1: free until this time (epoch seconds).")
    free_quota_tokens: int | None = Field(None, gt=0, le=MAX_BIGINT,
                                          description="Free mode 2: tokens a project may claim.")
    rpm: int = Field(DEFAULT_RPM, gt=0, le=MAX_BIGINT, description="Model-level requests per minute, per project.")
    tpm: int = Field(DEFAULT_TPM, gt=0, le=MAX_BIGINT, description="Model-level tokens per minute, per project.")

    @model_validator(mode="after")
    def _modes(self) -> "PresetSpec":
        if self.kind == "commercial" and (self.expires_at is not None or self.free_quota_tokens is not None):
            raise ValueError("a commercial preset has neither an expiry time nor a free quota")
        return self


class PresetView(PresetSpec):
    model_id: str


class ProjectPresetView(PresetView):
    activated: bool = Field(description="Commercial: activated. Free with a quota: claimed.")
    frozen: bool


class FreezeSpec(BaseModel):
    project_id: str
    frozen: bool = True


def _view(row: Preset) -> PresetView:
    return PresetView(model_id=row.model_id, kind=row.kind, expires_at=row.expires_at,
                      free_quota_tokens=row.free_quota_tokens, rpm=row.rpm, tpm=row.tpm)


def _preset(session, model_id: str) -> Preset:
    row = session.get(Preset, model_id)
    if row is None:
        raise PlatformError("MaaS.0404", what=f"Preset service {model_id!r}")
    return row


@router.get("/presets", response_model=list[PresetView])
async def list_presets(_: Admin):
    with session_scope(database_url()) as session:
        return [_view(row) for row in session.scalars(select(Preset).order_by(Preset.model_id))]


@router.put("/presets/{model_id}", response_model=PresetView)
async def set_preset(model_id: str, spec: PresetSpec, _: Admin):
    with session_scope(database_url()) as session:
        if session.get(ServedModel, model_id) is None:
            raise PlatformError("MaaS.0404", what=f"Served model {model_id!r}")
        row = session.get(Preset, model_id) or Preset(model_id=model_id)
        for field, value in spec.model_dump().items():
            setattr(row, field, value)
        session.add(row)
        session.flush()
        view = _view(row)
    await reload_accounting()
    return view


@router.post("/presets/{model_id}/freeze", response_model=ProjectPresetView)
async def freeze(model_id: str, spec: FreezeSpec, _: Admin):
    """Freeze (arrears) or unfreeze a project's use of a preset."""
    with session_scope(database_url()) as session:
        preset = _preset(session, model_id)
        grant = session.get(PresetGrant, (spec.project_id, model_id))
        if grant is None:
            grant = PresetGrant(project_id=spec.project_id, model_id=model_id)
            session.add(grant)
        grant.frozen = spec.frozen
        session.flush()
        view = ProjectPresetView(**_view(preset).model_dump(), activated=True, frozen=grant.frozen)
    await reload_accounting()
    return view


@router.get("/{project_id}/presets", response_model=list[ProjectPresetView])
async def project_presets(project_id: ProjectId):
    with session_scope(database_url()) as session:
        grants = {g.model_id: g for g in session.scalars(select(PresetGrant).where(PresetGrant.project_id == project_id))}
        return [ProjectPresetView(**_view(row).model_dump(), activated=row.model_id in grants,
                                  frozen=bool(grants.get(row.model_id) and grants[row.model_id].frozen))
                for row in session.scalars(select(Preset).order_by(Preset.model_id))]


class ActivateSpec(BaseModel):
    models: list[str] | None = Field(None, description="Commercial presets to activate; default: all of them.")


@router.post("/{project_id}/presets/activate", response_model=list[ProjectPresetView])
async def activate(project_id: ProjectId, spec: ActivateSpec):
    """Activate commercial presets (every version at once). There is no way back: activation is permanent."""
    with session_scope(database_url()) as session:
        commercial = {p.model_id: p for p in session.scalars(select(Preset).where(Preset.kind == "commercial"))}
        wanted = spec.models if spec.models is not None else sorted(commercial)
        for model_id in wanted:
            if model_id not in commercial:
                raise PlatformError("MaaS.0400", reason=f"{model_id!r} is not a commercial preset service.")
        for model_id in wanted:
            grant = session.get(PresetGrant, (project_id, model_id))
            if grant is not None and grant.frozen:
                raise PlatformError("ModelArts.81006")
            if grant is None:
                session.add(PresetGrant(project_id=project_id, model_id=model_id))
    await reload_accounting()
    return await project_presets(project_id)


@router.post("/{project_id}/presets/{model_id}/claim", response_model=ProjectPresetView)
async def claim(project_id: ProjectId, model_id: str):
    """Claim the free token quota of a free preset (mode 2); claiming twice changes nothing."""
    with session_scope(database_url()) as session:
        preset = _preset(session, model_id)
        if preset.kind != "free" or preset.free_quota_tokens is None:
            raise PlatformError("MaaS.0400", reason=f"{model_id!r} has no free quota to claim.")
        grant = session.get(PresetGrant, (project_id, model_id))
        if grant is None:
            grant = PresetGrant(project_id=project_id, model_id=model_id)
            session.add(grant)
            session.flush()
        view = ProjectPresetView(**_view(preset).model_dump(), activated=True, frozen=grant.frozen)
    await reload_accounting()
    return view
