"""REST routes of fine-tuning: `/v1/{project_id}/finetune/...` (its datasets: `cluster.datasets`).

Plain `def` routes: FastAPI runs them in its thread pool (they submit Ray Jobs and read files)."""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, PlainTextResponse
from sqlalchemy import select

from cluster.runtime.accounting import reload_accounting_blocking
from cluster.deps import Confirmed, ProjectId, database_url
from cluster.finetune import service
from cluster.finetune.schemas import JobCreate, JobView, Promote, metrics
from cluster.runtime import events, jobs
from cluster.schemas import JobEventView
from cluster.state.db import TuningJob, session_scope
from serve_apps.errors import PlatformError

log = logging.getLogger("maas.finetune")
router = APIRouter(prefix="/v1/{project_id}", tags=["fine-tuning"])
DeleteConfirmed = Confirmed("DELETE", "Deleting a tuning job")


@router.post("/finetune", status_code=201, response_model=JobView)
def create_job(project_id: ProjectId, spec: JobCreate):
    """Validate the dataset and the parameters first (no compute is spent on a bad job), then run it."""
    with session_scope(database_url()) as session:
        view = service.create_job(session, project_id, spec)
    jobs.wake()
    return view


@router.get("/finetune", response_model=list[JobView])
def list_jobs(project_id: ProjectId):
    with session_scope(database_url()) as session:
        return [JobView.of(r) for r in session.scalars(select(TuningJob).where(TuningJob.project_id == project_id)
                                                       .order_by(TuningJob.created_at))]


@router.get("/finetune/{job}", response_model=JobView)
def get_job(project_id: ProjectId, job: str):
    with session_scope(database_url()) as session:
        return JobView.of(service.find(session, project_id, job))


@router.post("/finetune/{job}/stop", response_model=JobView)
def stop_job(project_id: ProjectId, job: str):
    with session_scope(database_url()) as session:
        view = service.stop_job(session, project_id, job)
    jobs.wake()
    return view


@router.post("/finetune/{job}/continue", response_model=JobView)
def continue_job(project_id: ProjectId, job: str):
    """Run again from the latest checkpoint: the step counter and the loss curve carry on."""
    with session_scope(database_url()) as session:
        view = service.continue_job(session, project_id, job)
    jobs.wake()
    return view


@router.get("/finetune/{job}/events", response_model=list[JobEventView])
def job_events(project_id: ProjectId, job: str):
    """Newest first, 30 days: status changes, troubles the platform had with the job, webhook outcomes."""
    with session_scope(database_url()) as session:
        return [JobEventView.of(e) for e in events.job_events(session, service.find(session, project_id, job))]


@router.delete("/finetune/{job}", status_code=204)
def delete_job(project_id: ProjectId, job: str, _confirmed: DeleteConfirmed):
    with session_scope(database_url()) as session:
        service.delete_job(session, project_id, job)


@router.get("/finetune/{job}/metrics")
def job_metrics(project_id: ProjectId, job: str, since_step: int = 0) -> list[dict]:
    with session_scope(database_url()) as session:
        return [m for m in metrics(service.find(session, project_id, job)) if m.get("step", 0) > since_step]


@router.get("/finetune/{job}/logs", response_class=PlainTextResponse)
def job_logs(project_id: ProjectId, job: str, search: str = "", download: bool = False):
    with session_scope(database_url()) as session:
        row = service.find(session, project_id, job)
    text = jobs.searched_logs(row, search)
    headers = {"Content-Disposition": f'attachment; filename="{row.name}.log"'} if download else {}
    return PlainTextResponse(text, headers=headers)


@router.get("/finetune/{job}/loss.png", response_class=FileResponse)
def job_loss_chart(project_id: ProjectId, job: str):
    with session_scope(database_url()) as session:
        row = service.find(session, project_id, job)
    chart = Path(row.output_dir) / "loss.png"
    if not chart.is_file():
        raise PlatformError("MaaS.0404", what=f"A loss chart of job {row.name!r}")
    return FileResponse(chart, media_type="image/png")


@router.get("/finetune/{job}/checkpoints")
def job_checkpoints(project_id: ProjectId, job: str) -> list[dict]:
    with session_scope(database_url()) as session:
        return service.checkpoints(service.find(session, project_id, job))


@router.post("/finetune/{job}/checkpoints/{checkpoint}/promote", status_code=201)
def promote_checkpoint(project_id: ProjectId, job: str, checkpoint: str, spec: Promote) -> dict:
    """Make an intermediate checkpoint a model version; only once the job has completed (spec §7.6)."""
    with session_scope(database_url()) as session:
        version = service.promote_checkpoint(session, project_id, job, checkpoint, spec.output_model)
    reload_accounting_blocking(log)  # committed: a LoRA version is callable at once
    return version
