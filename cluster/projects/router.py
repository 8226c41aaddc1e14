"""REST routes of projects: `/v1/projects` (admin only)."""

from __future__ import annotations

import shutil

from fastapi import APIRouter

from cluster.deps import Admin, Confirmed, ProjectId, database_url
from cluster.projects import quotas, service
from cluster.projects.schemas import ProjectCreate, ProjectView, QuotaSpec, QuotaView
from cluster.settings import get_settings
from cluster.state.db import session_scope

router = APIRouter(prefix="/v1/projects", tags=["projects"])
DeleteConfirmed = Confirmed("DELETE", "Deleting a project")


@router.post("", status_code=201, response_model=ProjectView)
async def create_project(spec: ProjectCreate, _: Admin):
    with session_scope(database_url()) as session:
        return service.create_project(session, spec)


@router.get("", response_model=list[ProjectView])
async def list_projects(_: Admin):
    with session_scope(database_url()) as session:
        return service.list_projects(session)


@router.delete("/{project_id}", status_code=204)
async def delete_project(project_id: str, _: Admin, _confirmed: DeleteConfirmed):
    with session_scope(database_url()) as session:
        service.delete_project(session, project_id)
    shutil.rmtree(get_settings().datasets_dir(project_id), ignore_errors=True)  # its dataset uploads


@router.get("/{project_id}/quotas", response_model=QuotaView)
async def get_quotas(project_id: ProjectId):
    """What the project may use (the admin key, or a key of the project)."""
    with session_scope(database_url()) as session:
        return quotas.quotas(session, project_id)


@router.put("/{project_id}/quotas", response_model=QuotaView)
async def set_quotas(project_id: str, spec: QuotaSpec, _: Admin):
    """Set the project's quotas; a field left out goes back to the platform's default."""
    with session_scope(database_url()) as session:
        return quotas.set_quotas(session, project_id, spec)
