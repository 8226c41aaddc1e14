"""REST routes of my models: `/v1/{project_id}/my-models` and their versions."""

from __future__ import annotations

import asyncio
import shutil

from fastapi import APIRouter
from sqlalchemy import delete, select

from cluster.runtime.accounting import reload_accounting
from cluster.deps import Confirmed, ProjectId, database_url
from cluster.my_models import registry, weights
from cluster.my_models.schemas import ModelCreate, ModelView, VersionCreate, VersionView
from cluster.state.db import ModelVersion, MyModel, session_scope
from serve_apps.errors import PlatformError

router = APIRouter(prefix="/v1/{project_id}/my-models", tags=["my models"])
DeleteModelConfirmed = Confirmed("DELETE", "Deleting a model")
DeleteVersionConfirmed = Confirmed("DELETE", "Deleting a model version")


@router.post("", status_code=201, response_model=ModelView)
async def create_model(project_id: ProjectId, spec: ModelCreate):
    """Create a model and its version 1 from a base catalog model and a directory of weights (copied)."""
    view = await asyncio.to_thread(registry.create_model, project_id, spec)
    await reload_accounting()  # a LoRA version is callable at once
    return view


@router.get("", response_model=list[ModelView])
async def list_models(project_id: ProjectId):
    with session_scope(database_url()) as session:
        rows = session.scalars(select(MyModel).where(MyModel.project_id == project_id).order_by(MyModel.created_at))
        return [registry.model_view(session, row) for row in rows]


@router.get("/{model}", response_model=ModelView)
async def get_model(project_id: ProjectId, model: str):
    with session_scope(database_url()) as session:
        return registry.model_view(session, registry.find_model(session, project_id, model))


@router.post("/{model}/versions", status_code=201, response_model=VersionView)
async def add_version(project_id: ProjectId, model: str, spec: VersionCreate):
    """The next version (numbered automatically; at most 10 per model)."""
    view = await asyncio.to_thread(registry.add_version, project_id, model, spec)
    await reload_accounting()
    return view


@router.get("/{model}/versions", response_model=list[VersionView])
async def list_versions(project_id: ProjectId, model: str):
    with session_scope(database_url()) as session:
        return [VersionView.of(row) for row in registry.versions(session, registry.find_model(session, project_id, model))]


@router.get("/{model}/versions/{version}", response_model=VersionView)
async def get_version(project_id: ProjectId, model: str, version: str):
    with session_scope(database_url()) as session:
        return VersionView.of(registry.find_version(session, registry.find_model(session, project_id, model), version))


@router.delete("/{model}", status_code=204)
async def delete_model(project_id: ProjectId, model: str, _confirmed: DeleteModelConfirmed):
    """Only when no version is used by a service or a job. Needs confirm=DELETE."""
    with session_scope(database_url()) as session:
        row = registry.find_model(session, project_id, model)
        registry.refuse_if_used(session, row, None)
        session.execute(delete(ModelVersion).where(ModelVersion.model_id == row.id))
        session.delete(row)
    await reload_accounting()  # its names stop being callable before the files go
    await asyncio.to_thread(shutil.rmtree, weights.model_dir(row.id), True)


@router.delete("/{model}/versions/{version}", status_code=204)
async def delete_version(project_id: ProjectId, model: str, version: str, _confirmed: DeleteVersionConfirmed):
    """Only when no service or job uses it, and not the model's only version. Needs confirm=DELETE."""
    with session_scope(database_url()) as session:
        parent = registry.find_model(session, project_id, model)
        row = registry.find_version(session, parent, version)
        registry.refuse_if_used(session, parent, row.version)
        if len(registry.versions(session, parent)) == 1:
            raise PlatformError("MaaS.0409", reason=f"Version {row.version} is the only version of model "
                                                    f"{parent.name!r}; delete the model instead.")
        session.delete(row)
    await reload_accounting()
    await asyncio.to_thread(shutil.rmtree, row.path, True)
