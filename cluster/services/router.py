"""REST routes of model services: `/v1/{project_id}/services`, and the product's service API mirrored at
`/v1/{project_id}/maas/services/{id}` (spec §4.6.1, "scheduled start/stop")."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import select

from cluster.deps import Confirmed, ProjectId, database_url
from cluster.services import service as svc
from cluster.services.lifecycle import Action
from cluster.services.schemas import (AutoscaleRequest, EventView, MirrorAction, QpsRequest, ScaleRequest,
                                      ServiceCreate, ServiceView, UpgradeRequest)
from cluster.state.db import Service, session_scope

router = APIRouter(prefix="/v1/{project_id}/services", tags=["services"])
mirror_router = APIRouter(prefix="/v1/{project_id}/maas/services", tags=["services"])
DeleteConfirmed = Confirmed("DELETE", "Deleting a service")


@router.post("", status_code=201, response_model=ServiceView)
async def create_service(project_id: ProjectId, spec: ServiceCreate):
    with session_scope(database_url()) as session:
        view, note = svc.create(session, project_id, spec)
    await svc.after_change([note] if note else [])
    return view


@router.get("", response_model=list[ServiceView])
async def list_services(project_id: ProjectId):
    with session_scope(database_url()) as session:
        rows = session.scalars(select(Service).where(Service.project_id == project_id).order_by(Service.created_at))
        return [svc.view(row) for row in rows]


@router.get("/{service}", response_model=ServiceView)
async def get_service(project_id: ProjectId, service: str):
    with session_scope(database_url()) as session:
        return svc.view(svc.find(session, project_id, service))


@router.post("/{service}/start", response_model=ServiceView)
async def start_service(project_id: ProjectId, service: str):
    return await svc.transition(project_id, service, Action.START, svc.start_changes, "Start requested; queued.")


@router.post("/{service}/stop", response_model=ServiceView)
async def stop_service(project_id: ProjectId, service: str):
    return await svc.transition(project_id, service, Action.STOP, svc.stop_changes, "Stop requested.")


@router.post("/{service}/scale", response_model=ServiceView)
async def scale_service(project_id: ProjectId, service: str, spec: ScaleRequest):
    return await svc.transition(project_id, service, Action.SCALE, svc.scale_changes(spec),
                                    "Scaling to {row.instances} instances.")


@router.post("/{service}/autoscale", response_model=ServiceView)
async def autoscale_service(project_id: ProjectId, service: str, spec: AutoscaleRequest):
    """Change the policy or the bounds live (from Running or Concerning); running replicas keep serving."""
    return await svc.transition(project_id, service, Action.SCALE, svc.autoscale_changes(spec),
                                svc.autoscale_message(spec))


@router.post("/{service}/qps", response_model=ServiceView)
async def set_service_qps(project_id: ProjectId, service: str, spec: QpsRequest):
    return await svc.transition(project_id, service, Action.SET_QPS, lambda row: {"qps": spec.qps},
                                    "QPS limit set to {row.qps}.")


@router.post("/{service}/upgrade", response_model=ServiceView)
async def upgrade_service(project_id: ProjectId, service: str, spec: UpgradeRequest):
    return await svc.transition(project_id, service, Action.UPGRADE, svc.upgrade_changes(project_id, spec),
                                    "Upgrading to version {row.model_version}; the current version keeps serving.")


@router.delete("/{service}", status_code=202, response_model=ServiceView)
async def delete_service(project_id: ProjectId, service: str, _confirmed: DeleteConfirmed):
    return await svc.transition(project_id, service, Action.DELETE, svc.delete_changes, "Delete requested.")


@router.get("/{service}/events", response_model=list[EventView])
async def list_events(project_id: ProjectId, service: str):
    """Newest first, 30 days. A deleted service's events stay listable by its id."""
    with session_scope(database_url()) as session:
        return svc.events(session, project_id, service)


@mirror_router.get("/{service_id}", response_model=ServiceView)
async def mirror_get(project_id: ProjectId, service_id: str):
    return await get_service(project_id, service_id)


@mirror_router.post("/{service_id}", response_model=ServiceView)
async def mirror_action(project_id: ProjectId, service_id: str, spec: MirrorAction):
    if spec.action_type == "restart":
        return await start_service(project_id, service_id)
    return await stop_service(project_id, service_id)
