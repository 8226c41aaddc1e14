"""Compression jobs in the console (spec §6.2): the list with progress, the create form (strategy, model and
version, output model, migration strength, calibration data), a job's page (progress refreshed by htmx, logs
with search and download, stop, delete after typing DELETE). Every action calls the compression room's route
functions (cluster.compression.router), so its rules and after-commit steps are the REST API's."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from cluster.compression import router as compression_router
from cluster.compression.schemas import CompressionCreate
from cluster.console.pages import Refused, access, go, page, posted, reason, status_of
from cluster.console.session import Viewer
from cluster.datasets import router as datasets_router
from cluster.my_models import router as my_models_router
from cluster.schemas import confirmation
from quantize.config import Strategy
from serve_apps.catalog import BUILTIN_MODELS, Job
from serve_apps.errors import PlatformError

router = APIRouter()
FORMATS = ("alpaca", "sharegpt", "moss", "csv", "xlsx")


async def _sources(project: str) -> list[dict]:
    """What may be compressed: catalog models that support it, and the project's full, uncompressed versions."""
    sources = [{"id": m.id, "label": f"{m.id} (catalog)", "versions": []} for m in BUILTIN_MODELS
               if Job.COMPRESS in m.supported_jobs]
    for m in await my_models_router.list_models(project):
        versions = [v.version for v in m.versions if v.kind == "full" and not v.quantization]
        if versions:
            sources.append({"id": m.name, "label": f"{m.name} (my model)", "versions": versions})
    return sources


async def _version_numbers(project: str) -> dict[str, str]:
    """A job's result is a version id; the page shows the version's number (the id once the version is gone)."""
    return {v.id: f"v{v.version}" for m in await my_models_router.list_models(project) for v in m.versions}


async def _list_page(request: Request, viewer: Viewer, project: str, status: int = 200, **context):
    jobs = await run_in_threadpool(compression_router.list_jobs, project)
    return await page(request, "compression.html", viewer, project, status, jobs=jobs[::-1],
                      versions=await _version_numbers(project), sources=await _sources(project),
                      strategies=[s.value for s in Strategy], formats=FORMATS, **context)


@router.get("/p/{project}/compression", response_class=HTMLResponse)
async def compression_page(request: Request, project: str, notice: str = ""):
    viewer = access(request, project)
    return await _list_page(request, viewer, project, notice=notice)


@router.get("/p/{project}/compression/rows", response_class=HTMLResponse)
async def compression_rows(request: Request, project: str):
    """The job table's rows alone (htmx refreshes them while a job runs)."""
    viewer = access(request, project)
    jobs = await run_in_threadpool(compression_router.list_jobs, project)
    return await page(request, "compression_rows.html", viewer, project, jobs=jobs[::-1],
                      versions=await _version_numbers(project))


@router.post("/p/{project}/compression", response_class=HTMLResponse)
async def create_compression(request: Request, project: str):
    """The optional calibration file is uploaded as a dataset first (the fine-tuning room's upload, as the REST
    API's `dataset` field expects), then the job is created: a bad job is refused before any compute."""
    viewer = access(request, project)
    form = await posted(request, viewer)
    upload = form.get("dataset")
    try:
        dataset = None
        if isinstance(upload, UploadFile) and upload.filename:
            dataset = (await run_in_threadpool(datasets_router.upload_dataset, project, upload))["id"]
        model, _, version = str(form.get("model", "")).partition("@")
        spec = CompressionCreate(
            name=form.get("name", ""), description=form.get("description", ""), model=model,
            model_version=form.get("model_version") or version or None, strategy=form.get("strategy", ""),
            migration_strength=form.get("migration_strength") or None, output_model=form.get("output_model", ""),
            dataset=dataset, format=form.get("format") or "alpaca", num_samples=form.get("num_samples") or 64,
            max_seq_len=form.get("max_seq_len") or 512, auto_stop=form.get("auto_stop") or None)
        job = await run_in_threadpool(compression_router.create_job, project, spec)
    except (PlatformError, ValidationError) as exc:
        return await _list_page(request, viewer, project, status_of(exc), error=reason(exc), form=dict(form))
    return go(request, f"/p/{project}/compression/{job.id}", f"Compression job {job.name} created: {job.status}.")


async def _job_page(request: Request, viewer: Viewer, project: str, job: str, status: int = 200, search: str = "",
                    **context):
    view = await run_in_threadpool(compression_router.get_job, project, job)
    try:
        logs = (await run_in_threadpool(compression_router.job_logs, project, view.id, search)).body.decode()
    except Exception:  # noqa: BLE001 - the Ray job's logs may be unreachable; the page still renders
        logs = "(logs not available)"
    return await page(request, "compression_job.html", viewer, project, status, job=view, logs=logs[-200_000:],
                      search=search, versions=await _version_numbers(project), **context)


@router.get("/p/{project}/compression/{job}", response_class=HTMLResponse)
async def compression_job_page(request: Request, project: str, job: str, search: str = "", notice: str = ""):
    viewer = access(request, project)
    return await _job_page(request, viewer, project, job, search=search, notice=notice)


@router.get("/p/{project}/compression/{job}/progress", response_class=HTMLResponse)
async def compression_progress(request: Request, project: str, job: str):
    """The status and progress block alone (htmx polls it every 2 s while the job is not finished)."""
    viewer = access(request, project)
    view = await run_in_threadpool(compression_router.get_job, project, job)
    return await page(request, "compression_progress.html", viewer, project, job=view,
                      versions=await _version_numbers(project))


@router.get("/p/{project}/compression/{job}/logs")
async def compression_logs_download(request: Request, project: str, job: str, search: str = ""):
    """The job's log as a file (the REST route's download)."""
    access(request, project)
    return await run_in_threadpool(compression_router.job_logs, project, job, search, True)


@router.post("/p/{project}/compression/{job}/{action}", response_class=HTMLResponse)
async def compression_action(request: Request, project: str, job: str, action: str):
    viewer = access(request, project)
    form = await posted(request, viewer)
    try:
        if action == "stop":
            view = await run_in_threadpool(compression_router.stop_job, project, job)
        elif action == "delete":
            confirmation("DELETE", "Deleting a compression job")(form.get("confirm", ""))
            view = await run_in_threadpool(compression_router.get_job, project, job)
            await run_in_threadpool(compression_router.delete_job, project, job, None)
            return go(request, f"/p/{project}/compression", f"Compression job {view.name} deleted.")
        else:
            raise Refused(404, "There is no such page.")
    except (PlatformError, ValidationError) as exc:
        return await _job_page(request, viewer, project, job, status_of(exc), error=reason(exc))
    return go(request, f"/p/{project}/compression/{view.id}", f"Stop requested: {view.status}.")
