"""REST routes of projects: `/v1/projects` (admin only)."""

from __future__ import annotations

import shutil

from fastapi import APIRouter

from cluster.deps import Admin, Confirmed, database_url
from cluster.projects import service
from cluster.projects.schemas import ProjectCreate, ProjectView
from cluster.finetune.service import datasets_dir
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
    shutil.rmtree(datasets_dir(project_id), ignore_errors=True)  # its dataset uploads
