"""REST routes of preset services: `/v1/presets` (admin) and `/v1/{project_id}/presets` (a project)."""

from __future__ import annotations

from fastapi import APIRouter

from cluster.runtime.accounting import reload_accounting
from cluster.deps import Admin, ProjectId, database_url
from cluster.presets import service
from cluster.presets.schemas import ActivateSpec, FreezeSpec, PresetSpec, PresetView, ProjectPresetView
from cluster.state.db import session_scope

router = APIRouter(prefix="/v1", tags=["presets"])


@router.get("/presets", response_model=list[PresetView])
async def list_presets(_: Admin):
    with session_scope(database_url()) as session:
        return service.list_presets(session)


@router.put("/presets/{model_id}", response_model=PresetView)
async def set_preset(model_id: str, spec: PresetSpec, _: Admin):
    with session_scope(database_url()) as session:
        view = service.set_preset(session, model_id, spec)
    await reload_accounting()
    return view


@router.post("/presets/{model_id}/freeze", response_model=ProjectPresetView)
async def freeze(model_id: str, spec: FreezeSpec, _: Admin):
    """Freeze (arrears) or unfreeze a project's use of a preset."""
    with session_scope(database_url()) as session:
        view = service.freeze(session, model_id, spec)
    await reload_accounting()
    return view


@router.get("/{project_id}/presets", response_model=list[ProjectPresetView])
async def project_presets(project_id: ProjectId):
    with session_scope(database_url()) as session:
        return service.project_presets(session, project_id)


@router.post("/{project_id}/presets/activate", response_model=list[ProjectPresetView])
async def activate(project_id: ProjectId, spec: ActivateSpec):
    """Activate commercial presets (every version at once). There is no way back: activation is permanent."""
    with session_scope(database_url()) as session:
        service.activate(session, project_id, spec.models)
    await reload_accounting()
    with session_scope(database_url()) as session:
        return service.project_presets(session, project_id)


@router.post("/{project_id}/presets/{model_id}/claim", response_model=ProjectPresetView)
async def claim(project_id: ProjectId, model_id: str):
    """Claim the free token quota of a free preset (mode 2); claiming twice changes nothing."""
    with session_scope(database_url()) as session:
        view = service.claim(session, project_id, model_id)
    await reload_accounting()
    return view
