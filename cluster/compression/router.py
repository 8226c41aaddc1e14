"""REST routes of compression: `/v1/{project_id}/compression/...` (spec §6.2).

Plain `def` routes: FastAPI runs them in its thread pool (they submit Ray Jobs and read files)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse
from sqlalchemy import select

from cluster.compression import service
from cluster.compression.schemas import CompressionCreate, CompressionView
from cluster.deps import Confirmed, ProjectId, database_url
from cluster.runtime import events, jobs
from cluster.schemas import JobEventView
from cluster.state.db import CompressionJob, session_scope

router = APIRouter(prefix="/v1/{project_id}", tags=["compression"])
DeleteConfirmed = Confirmed("DELETE", "Deleting a compression job")


@router.post("/compression", status_code=201, response_model=CompressionView)
def create_job(project_id: ProjectId, spec: CompressionCreate):
    """Check the model, the strategy and the calibration data first (no compute on a bad job), then run it."""
    with session_scope(database_url()) as session:
        view = service.create_job(session, project_id, spec)
    jobs.wake()
    return view


@router.get("/compression", response_model=list[CompressionView])
def list_jobs(project_id: ProjectId):
    with session_scope(database_url()) as session:
        rows = session.scalars(select(CompressionJob).where(CompressionJob.project_id == project_id)
                               .order_by(CompressionJob.created_at))
        return [CompressionView.of(r) for r in rows]


@router.get("/compression/{job}", response_model=CompressionView)
def get_job(project_id: ProjectId, job: str):
    with session_scope(database_url()) as session:
        return CompressionView.of(service.find(session, project_id, job))


@router.post("/compression/{job}/stop", response_model=CompressionView)
def stop_job(project_id: ProjectId, job: str):
    with session_scope(database_url()) as session:
        view = service.stop_job(session, project_id, job)
    jobs.wake()
    return view


@router.get("/compression/{job}/events", response_model=list[JobEventView])
def job_events(project_id: ProjectId, job: str):
    """Newest first, 30 days: status changes, troubles the platform had with the job, webhook outcomes."""
    with session_scope(database_url()) as session:
        return [JobEventView.of(e) for e in events.job_events(session, service.find(session, project_id, job))]


@router.delete("/compression/{job}", status_code=204)
def delete_job(project_id: ProjectId, job: str, _confirmed: DeleteConfirmed):
    with session_scope(database_url()) as session:
        service.delete_job(session, project_id, job)


@router.get("/compression/{job}/logs", response_class=PlainTextResponse)
def job_logs(project_id: ProjectId, job: str, search: str = "", download: bool = False):
    with session_scope(database_url()) as session:
        row = service.find(session, project_id, job)
    text = jobs.searched_logs(row, search)
    headers = {"Content-Disposition": f'attachment; filename="{row.name}.log"'} if download else {}
    return PlainTextResponse(text, headers=headers)
