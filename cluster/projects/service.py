"""Projects (tenants): they own keys, services, endpoints, jobs and usage. A project that still owns
anything live cannot be deleted; the default project never. Deleting one removes its records too."""

from __future__ import annotations

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from cluster.projects.schemas import ProjectCreate, ProjectView
from cluster.state.db import (DEFAULT_PROJECT, ApiKey, Endpoint, JobEvent, MyModel, PresetGrant, Project, Service,
                              ServiceEvent, TuningJob, UsageRecord)
from serve_apps.errors import PlatformError


def _view(row: Project) -> ProjectView:
    return ProjectView(id=row.id, name=row.name, created_at=row.created_at)


def create_project(session: Session, spec: ProjectCreate) -> ProjectView:
    if session.get(Project, spec.id) is not None:
        raise PlatformError("MaaS.0409", reason=f"A project {spec.id!r} already exists.")
    row = Project(id=spec.id, name=spec.name or spec.id)
    session.add(row)
    session.flush()
    return _view(row)


def list_projects(session: Session) -> list[ProjectView]:
    return [_view(p) for p in session.scalars(select(Project).order_by(Project.created_at))]


def delete_project(session: Session, project_id: str) -> None:
    if project_id == DEFAULT_PROJECT:
        raise PlatformError("MaaS.0409", reason="The default project cannot be deleted.")
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
    # What remains of it goes too: a project created again with this id starts empty.
    for table in (Endpoint, PresetGrant, UsageRecord, ServiceEvent, JobEvent):
        session.execute(delete(table).where(table.project_id == project_id))
    session.delete(session.get(Project, project_id))
