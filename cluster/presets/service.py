"""Preset services: the platform's own models, offered free (until an expiry time, or up to a claimable token
quota) or commercially (a project activates them once and for all). The admin sets the offer and may freeze
a project's use; projects activate, claim, and list what they have."""

from __future__ import annotations

import time

from sqlalchemy import select
from sqlalchemy.orm import Session

from cluster.presets.schemas import (DEFAULT_RPM, DEFAULT_TPM, FreezeSpec, PresetSpec, PresetView,
                                     ProjectPresetView)
from cluster.state.db import Preset, PresetGrant, ServedModel, now
from serve_apps.catalog import builtin
from serve_apps.errors import PlatformError


def _view(row: Preset) -> PresetView:
    return PresetView(model_id=row.model_id, kind=row.kind, expires_at=row.expires_at,
                      free_quota_tokens=row.free_quota_tokens, rpm=row.rpm, tpm=row.tpm)


def _preset(session: Session, model_id: str) -> Preset:
    row = session.get(Preset, model_id)
    if row is None:
        raise PlatformError("MaaS.0404", what=f"Preset service {model_id!r}")
    return row


def _grant(session: Session, project_id: str, model_id: str, granted: bool = True) -> PresetGrant:
    """The project's row for a preset. `granted`: its activation or claim (a row a freeze made before, not
    granted, becomes one from now); not granted: the row a freeze needs, a grant only if it was one already."""
    grant = session.get(PresetGrant, (project_id, model_id))
    if grant is None:
        grant = PresetGrant(project_id=project_id, model_id=model_id, granted=granted, created_at=time.time())
        session.add(grant)
    elif granted and not grant.granted:
        grant.granted, grant.created_at = True, time.time()
    session.flush()
    return grant


def list_presets(session: Session) -> list[PresetView]:
    return [_view(row) for row in session.scalars(select(Preset).order_by(Preset.model_id))]


def set_preset(session: Session, model_id: str, spec: PresetSpec) -> PresetView:
    if session.get(ServedModel, model_id) is None:
        raise PlatformError("MaaS.0404", what=f"Served model {model_id!r}")
    row = session.get(Preset, model_id) or Preset(model_id=model_id)
    for field, value in spec.model_dump().items():
        setattr(row, field, value)
    session.add(row)
    session.flush()
    return _view(row)


def freeze(session: Session, model_id: str, spec: FreezeSpec) -> ProjectPresetView:
    """Freezing a project that never activated or claimed records the freeze only (`granted` false)."""
    preset = _preset(session, model_id)
    grant = _grant(session, spec.project_id, model_id, granted=False)
    grant.frozen = spec.frozen
    session.flush()
    return ProjectPresetView(**_view(preset).model_dump(), activated=grant.granted, frozen=grant.frozen)


def project_presets(session: Session, project_id: str) -> list[ProjectPresetView]:
    grants = {g.model_id: g for g in session.scalars(select(PresetGrant).where(PresetGrant.project_id == project_id))}
    return [ProjectPresetView(**_view(row).model_dump(),
                              activated=bool(grants.get(row.model_id) and grants[row.model_id].granted),
                              frozen=bool(grants.get(row.model_id) and grants[row.model_id].frozen))
            for row in session.scalars(select(Preset).order_by(Preset.model_id))]


def activate(session: Session, project_id: str, models: list[str] | None) -> None:
    """Activate commercial presets (every version at once); activation is permanent."""
    commercial = {p.model_id: p for p in session.scalars(select(Preset).where(Preset.kind == "commercial"))}
    wanted = models if models is not None else sorted(commercial)
    for model_id in wanted:
        if model_id not in commercial:
            raise PlatformError("MaaS.0400", reason=f"{model_id!r} is not a commercial preset service.")
    for model_id in wanted:
        grant = session.get(PresetGrant, (project_id, model_id))
        if grant is not None and grant.frozen:
            raise PlatformError("ModelArts.81006")
        _grant(session, project_id, model_id)


def claim(session: Session, project_id: str, model_id: str) -> ProjectPresetView:
    """Claim the free token quota of a free preset (mode 2); claiming twice changes nothing."""
    preset = _preset(session, model_id)
    if preset.kind != "free" or preset.free_quota_tokens is None:
        raise PlatformError("MaaS.0400", reason=f"{model_id!r} has no free quota to claim.")
    grant = _grant(session, project_id, model_id)
    return ProjectPresetView(**_view(preset).model_dump(), activated=True, frozen=grant.frozen)


def register_builtin_models(session: Session, model_ids: list[str]) -> None:
    """Record which built-in models this platform serves (app name = model id), each offered free and
    unlimited until an admin says otherwise."""
    for model_id in model_ids:
        card = builtin(model_id)
        row = session.get(ServedModel, model_id)
        created = row.created_at if row else now()
        payload = card.model_dump(mode="json") | {"created": created}
        if row is None:
            session.add(ServedModel(model_id=model_id, project_id=None, app_name=model_id,
                                    deployment_name=f"engine-{model_id}", card=payload, created_at=created))
            session.flush()
        else:
            row.card = payload
        if session.get(Preset, model_id) is None:
            session.add(Preset(model_id=model_id, kind="free", rpm=DEFAULT_RPM, tpm=DEFAULT_TPM))
