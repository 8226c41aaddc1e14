"""Projects (tenants): they own keys, services, endpoints, jobs and usage. Admin-only."""

from __future__ import annotations

import re

from fastapi import APIRouter
from pydantic import BaseModel, Field, field_validator
from sqlalchemy import delete, func, select

from cluster.db import (DEFAULT_PROJECT, ApiKey, Endpoint, MyModel, PresetGrant, Project, Service, TuningJob,
                        session_scope)
from cluster.deps import Admin, database_url
from serve_apps.errors import PlatformError

_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
router = APIRouter(prefix="/v1/projects", tags=["projects"])


class ProjectCreate(BaseModel):
    id: str = Field(description="1-64 of a-z 0-9 _ -, starting with a letter or digit; used in URLs.")
    name: str = Field("", max_length=64, description="Display name (defaults to the id).")

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not _ID.match(value):
            raise ValueError("id must be 1-64 of a-z 0-9 _ -, starting with a letter or digit")
        return value


class ProjectView(BaseModel):
    id: str
    name: str
    created_at: int


@router.post("", status_code=201, response_model=ProjectView)
async def create_project(spec: ProjectCreate, _: Admin):
    with session_scope(database_url()) as session:
        if session.get(Project, spec.id) is not None:
            raise PlatformError("MaaS.0409", reason=f"A project {spec.id!r} already exists.")
        row = Project(id=spec.id, name=spec.name or spec.id)
        session.add(row)
        session.flush()
        return ProjectView(id=row.id, name=row.name, created_at=row.created_at)


@router.get("", response_model=list[ProjectView])
async def list_projects(_: Admin):
    with session_scope(database_url()) as session:
        return [ProjectView(id=p.id, name=p.name, created_at=p.created_at)
                for p in session.scalars(select(Project).order_by(Project.created_at))]


@router.delete("/{project_id}", status_code=204)
async def delete_project(project_id: str, _: Admin, confirm: str = ""):
    if confirm != "DELETE":
        raise PlatformError("MaaS.0400", reason="Deleting a project needs the confirmation text DELETE.")
    if project_id == DEFAULT_PROJECT:
        raise PlatformError("MaaS.0409", reason="The default project cannot be deleted.")
    with session_scope(database_url()) as session:
        if session.get(Project, project_id) is None:
            raise PlatformError("MaaS.0404", what=f"Project {project_id!r}")
        live = {ApiKey: ApiKey.project_id == project_id, Service: Service.project_id == project_id,
                MyModel: MyModel.project_id == project_id, TuningJob: TuningJob.project_id == project_id,
                Endpoint: (Endpoint.project_id == project_id) & Endpoint.deleted_at.is_(None)}
        for table, owned_by in live.items():
            owned = session.scalar(select(func.count()).select_from(table).where(owned_by))
            if owned:
                raise PlatformError("MaaS.0409", reason=f"Project {project_id!r} still owns {owned} "
                                                        f"{table.__tablename__.replace('_', ' ')}; delete them first.")
        session.execute(delete(Endpoint).where(Endpoint.project_id == project_id))
        session.execute(delete(PresetGrant).where(PresetGrant.project_id == project_id))
        session.delete(session.get(Project, project_id))
