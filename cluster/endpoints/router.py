"""REST routes of custom endpoints: `/v1/{project_id}/endpoints`."""

from __future__ import annotations

from fastapi import APIRouter

from cluster.runtime.accounting import reload_accounting
from cluster.deps import Confirmed, ProjectId, database_url
from cluster.endpoints import service
from cluster.endpoints.schemas import (
    Confirm,
    EndpointCreate,
    EndpointUpdate,
    EndpointView,
)
from cluster.schemas import confirmation
from cluster.state.db import session_scope

router = APIRouter(prefix="/v1/{project_id}/endpoints", tags=["endpoints"])
DeleteConfirmed = Confirmed("DELETE", "Deleting an endpoint")
check_disable = confirmation("YES", "Disabling an endpoint")


@router.post("", status_code=201, response_model=EndpointView)
async def create_endpoint(project_id: ProjectId, spec: EndpointCreate):
    with session_scope(database_url()) as session:
        view = service.create_endpoint(session, project_id, spec)
    await reload_accounting()
    return view


@router.get("", response_model=list[EndpointView])
async def list_endpoints(project_id: ProjectId):
    with session_scope(database_url()) as session:
        return service.list_endpoints(session, project_id)


@router.get("/{endpoint}", response_model=EndpointView)
async def get_endpoint(project_id: ProjectId, endpoint: str):
    with session_scope(database_url()) as session:
        return EndpointView.of(service.live(session, project_id, endpoint))


@router.patch("/{endpoint}", response_model=EndpointView)
async def update_endpoint(project_id: ProjectId, endpoint: str, spec: EndpointUpdate):
    """Description and limits; the service an endpoint fronts never changes."""
    with session_scope(database_url()) as session:
        view = service.update_endpoint(session, project_id, endpoint, spec)
    await reload_accounting()
    return view


async def _set_enabled(project_id: str, endpoint: str, enabled: bool) -> EndpointView:
    with session_scope(database_url()) as session:
        view = service.set_enabled(session, project_id, endpoint, enabled)
    await reload_accounting()
    return view


@router.post("/{endpoint}/disable", response_model=EndpointView)
async def disable_endpoint(project_id: ProjectId, endpoint: str, spec: Confirm):
    check_disable(spec.confirm)
    return await _set_enabled(project_id, endpoint, False)


@router.post("/{endpoint}/enable", response_model=EndpointView)
async def enable_endpoint(project_id: ProjectId, endpoint: str):
    return await _set_enabled(project_id, endpoint, True)


@router.delete("/{endpoint}", status_code=204)
async def delete_endpoint(project_id: ProjectId, endpoint: str, _confirmed: DeleteConfirmed):
    with session_scope(database_url()) as session:
        service.delete_endpoint(session, project_id, endpoint)
    await reload_accounting()
