"""Fine-tuning jobs (spec §7) and the datasets they read: create (validated before any compute), stop,
continue from the latest checkpoint, delete with `DELETE`; progress, metrics, logs, loss chart, checkpoints.

A job's parameters become a `train_jobs.config.FinetuneConfig` (the one schema the entrypoint also reads),
written to `<output_dir>/job.yaml` and run as a Ray Job (see `job_runner`). When it completes, its output is
registered as a new version of the output model in "my models" (a LoRA adapter or a full model).
"""

from __future__ import annotations

import json
import re
import shutil
import uuid
from enum import Enum
from pathlib import Path

from fastapi import APIRouter, UploadFile
from fastapi.responses import FileResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from sqlalchemy import or_, select

from cluster import job_runner, my_models
from cluster.db import TuningJob, now, session_scope
from cluster.deps import ProjectId, database_url, reload_accounting_blocking
from cluster.services import format_duration, parse_auto_stop
from cluster.settings import get_settings
from serve_apps.catalog import BUILTIN_MODELS
from serve_apps.errors import PlatformError
from train_jobs.config import JOB_NAME_PATTERN, FinetuneConfig, LoraSettings
from train_jobs.datasets import DatasetInvalid, read_dataset
from train_jobs.progress import METRICS_FILE, read_status

router = APIRouter(prefix="/v1/{project_id}", tags=["fine-tuning"])
_CATALOG = {m.id: m for m in BUILTIN_MODELS}
JOB_SUPPORT = {"full": "finetune-full", "lora": "finetune-lora", "pretrain": "pretrain"}
# What each state allows (spec §7.5); everything else is refused.
ALLOWED = {"stop": {"creating", "pending", "starting", "running", "alarm"}, "continue": {"stopped"},
           "delete": {"stopped", "completed", "failed"}}
NOTIFIABLE = ("pending", "starting", "running", "stopping", "stopped", "completed", "failed")


class JobKind(str, Enum):
    full = "full"
    lora = "lora"
    pretrain = "pretrain"


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="1-64: a letter (CJK included) first, then letters, digits, - or _.")
    description: str = Field("", max_length=1000)
    model: str = Field(description="A catalog model, or a model of yours (id or name).")
    model_version: str | None = Field(None, description="Version of a model of yours (default: the latest).")
    type: JobKind
    dataset: str = Field(description="A dataset id from POST /datasets, or a path on the platform's hosts.")
    format: str = Field("alpaca", description="moss, alpaca, sharegpt, csv or xlsx")
    output_model: str = Field(description="The model of yours the result becomes a new version of.")
    epochs: int = Field(1, ge=1, le=1000)
    learning_rate: float = Field(2e-5, ge=0.0, le=0.1)
    global_batch_size: int = Field(32, ge=1)
    max_seq_len: int = Field(1024, ge=8)
    checkpoints: int = Field(1, ge=1, le=10, description="Checkpoints to keep: 1..min(iterations, 10).")
    workers: int = Field(1, ge=1, description="Ray Train workers (compute nodes).")
    max_failures: int = Field(3, ge=1, le=128, description="Automatic restarts from the latest checkpoint.")
    lora: LoraSettings = LoraSettings()
    merge_lora: bool = Field(False, description="LoRA only: the output version is the base model with the adapter "
                                                "merged in (a full model, deployable as its own service).")
    auto_stop: str | None = Field(None, description="Stop after this much running time: 1h, 2h, 4h, 6h or a custom "
                                                     "duration (90m, 12h). Queued or starting time is not counted.")
    notify_url: str | None = Field(None, max_length=1024, description="Webhook that receives a JSON POST when the "
                                                                       "job enters one of notify_events.")
    notify_events: list[str] = Field([], description=f"Job statuses to notify: {', '.join(NOTIFIABLE)}.")

    @field_validator("auto_stop")
    @classmethod
    def _auto_stop(cls, value: str | None) -> str | None:
        if value is not None:
            parse_auto_stop(value)
        return value

    @field_validator("notify_events")
    @classmethod
    def _events(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - set(NOTIFIABLE))
        if unknown:
            raise ValueError(f"unknown job statuses {unknown}; choose from {', '.join(NOTIFIABLE)}")
        return value

    @model_validator(mode="after")
    def _notification(self) -> "JobCreate":
        if self.notify_url is not None and not re.match(r"^https?://[^\s/]+", self.notify_url):
            raise ValueError("notify_url must be an http:// or https:// URL")
        if bool(self.notify_url) != bool(self.notify_events):
            raise ValueError("event notification needs both notify_url and at least one of notify_events")
        if self.merge_lora and self.type.value != "lora":
            raise ValueError("merge_lora applies to LoRA jobs only")
        return self

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not re.match(JOB_NAME_PATTERN, value):
            raise ValueError("name must be 1-64 characters: a letter first, then letters, digits, - or _")
        return value

    @field_validator("output_model")
    @classmethod
    def _output(cls, value: str) -> str:
        return my_models.check_name(value)


class JobView(BaseModel):
    id: str
    project_id: str
    name: str
    description: str
    type: str
    model: str
    model_version: str | None
    base_model: str
    dataset_format: str
    output_model: str
    status: str
    status_reason: str
    data_count: int
    iterations: int
    runs: int
    result_version: str
    progress: dict = Field(description="step, total_steps, percent, elapsed_s, eta_s, loss, learning_rate, "
                                       "tokens_per_s of the latest step")
    params: dict
    resumes: list[dict] = Field(description="Each continue or automatic restart: the checkpoint step it resumed "
                                            "from, and when.")
    auto_stop: str | None
    running_seconds: int = Field(description="Running time so far (what auto-stop counts).")
    created_at: int
    updated_at: int

    @classmethod
    def of(cls, row: TuningJob) -> "JobView":
        return cls(id=row.id, project_id=row.project_id, name=row.name, description=row.description,
                   type=row.job_type, model=row.model_ref, model_version=row.model_version, base_model=row.base_model,
                   dataset_format=row.dataset_format, output_model=row.output_model, status=row.status,
                   status_reason=row.status_reason, data_count=row.data_count, iterations=row.iterations,
                   runs=row.runs, result_version=row.result_version, progress=_latest_metrics(row),
                   params=row.params, resumes=read_status(Path(row.output_dir)).get("resumes", []),
                   auto_stop=format_duration(row.auto_stop_s),
                   running_seconds=job_runner.running_seconds(row), created_at=row.created_at,
                   updated_at=row.updated_at)


def _metrics(row: TuningJob) -> list[dict]:
    try:
        return [json.loads(line) for line in (Path(row.output_dir) / METRICS_FILE).read_text().splitlines() if line]
    except OSError:
        return []


def _latest_metrics(row: TuningJob) -> dict:
    records = _metrics(row)
    return records[-1] if records else {}


def _job(session, project_id: str, ref: str) -> TuningJob:
    row = session.scalar(select(TuningJob).where(TuningJob.project_id == project_id,
                                                 or_(TuningJob.id == ref, TuningJob.name == ref)))
    if row is None:
        raise PlatformError("MaaS.0404", what=f"Tuning job {ref!r}")
    return row


def _check(action: str, row: TuningJob) -> None:
    if row.status not in ALLOWED[action]:
        allowed = ", ".join(sorted(ALLOWED[action]))
        raise PlatformError("MaaS.0409", reason=f"Cannot {action} the job {row.name!r} while it is {row.status}; "
                                                f"{action} is allowed from: {allowed}.")


def _datasets_dir(project_id: str) -> Path:
    return get_settings().home / "datasets" / project_id


def _base(session, project_id: str, spec: JobCreate) -> tuple[str, Path]:
    """(catalog family, weights directory) of the model to tune."""
    if spec.model in _CATALOG:
        card = _CATALOG[spec.model]
        if JOB_SUPPORT[spec.type.value] not in [j.value for j in card.supported_jobs]:
            raise PlatformError("MaaS.0400", reason=f"{spec.model} does not support {spec.type.value} jobs.")
        return card.id, my_models.base_path(card)
    resolved = my_models.resolve_version(session, project_id, spec.model, spec.model_version)
    if resolved.kind != "full":
        raise PlatformError("MaaS.0400", reason="A LoRA version cannot be tuned further; tune its base model.")
    return resolved.base_model, resolved.path


def _template_kwargs(family: str) -> dict:
    """What the gateway puts in chat_template_kwargs when the caller does not: train with the same."""
    card = _CATALOG.get(family)
    return {card.thinking_kwarg: card.thinking_default} if card is not None and card.thinking_kwarg else {}


def _config(row: TuningJob, base_path: Path, spec: JobCreate) -> FinetuneConfig:
    try:
        return FinetuneConfig(
            name=spec.name, job_type=spec.type.value, base_model_path=base_path, dataset_path=row.dataset_path,
            dataset_format=spec.format, output_dir=row.output_dir, epochs=spec.epochs,
            learning_rate=spec.learning_rate, global_batch_size=spec.global_batch_size,
            max_seq_len=spec.max_seq_len, checkpoints_to_keep=spec.checkpoints, num_workers=spec.workers,
            max_failures=spec.max_failures, lora=spec.lora, merge_lora=spec.merge_lora,
            chat_template_kwargs=_template_kwargs(row.base_model))
    except ValidationError as exc:
        reason = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'job'}: {e['msg']}" for e in exc.errors())
        raise PlatformError("MaaS.0400", reason=reason) from None


@router.post("/datasets", status_code=201)
async def upload_dataset(project_id: ProjectId, file: UploadFile) -> dict:
    """Store a dataset file on the platform; its id is what a job's `dataset` names."""
    dataset_id = "ds-" + uuid.uuid4().hex[:12]
    target = _datasets_dir(project_id) / dataset_id / Path(file.filename or "dataset.jsonl").name
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("wb") as out:
        shutil.copyfileobj(file.file, out)
    return {"id": dataset_id, "path": str(target), "bytes": target.stat().st_size}


def _dataset_path(project_id: str, ref: str) -> Path:
    if ref.startswith("ds-"):
        found = list((_datasets_dir(project_id) / ref).glob("*"))
        if not found:
            raise PlatformError("MaaS.0404", what=f"Dataset {ref!r}")
        return found[0]
    path = Path(ref)
    if not path.is_file():
        raise PlatformError("MaaS.0404", what=f"Dataset file {ref!r}")
    return path


@router.post("/finetune", status_code=201, response_model=JobView)
def create_job(project_id: ProjectId, spec: JobCreate):
    """Validate the dataset and the parameters first (no compute is spent on a bad job), then run it."""
    dataset = _dataset_path(project_id, spec.dataset)
    with session_scope(database_url()) as session:
        if session.scalar(select(TuningJob.id).where(TuningJob.project_id == project_id, TuningJob.name == spec.name)):
            raise PlatformError("MaaS.0409", reason=f"A tuning job named {spec.name!r} already exists.")
        base_model, base_path = _base(session, project_id, spec)
        job_id = "ft-" + uuid.uuid4().hex[:12]
        row = TuningJob(id=job_id, project_id=project_id, name=spec.name, description=spec.description,
                        job_type=spec.type.value, model_ref=spec.model, model_version=spec.model_version,
                        base_model=base_model, dataset_path=str(dataset), dataset_format=spec.format,
                        params=spec.model_dump(mode="json", exclude={"name", "description", "model", "type",
                                                                      "notify_url", "notify_events"}),
                        auto_stop_s=parse_auto_stop(spec.auto_stop) if spec.auto_stop else None,
                        notify_url=spec.notify_url, notify_events=spec.notify_events,
                        output_model=spec.output_model, status="creating", status_reason="", runs=0,
                        submission_id="", result_version="", data_count=0, iterations=0,
                        output_dir=str(get_settings().home / "finetune" / project_id / job_id))
        config = _config(row, base_path, spec)
        try:
            samples = read_dataset(dataset, config.dataset_format.value, kind=config.dataset_kind)
            config = config.with_data_count(len(samples))
        except DatasetInvalid as invalid:  # the job exists and failed in its validating phase, with the report
            row.status = "failed"
            row.status_reason = "dataset validation failed\n" + str(invalid)
            session.add(row)
            session.flush()
            return JobView.of(row)
        except ValidationError as exc:
            raise PlatformError("MaaS.0400", reason="; ".join(e["msg"] for e in exc.errors())) from None
        row.data_count, row.iterations = len(samples), config.iterations(len(samples))
        Path(row.output_dir).mkdir(parents=True, exist_ok=True)
        config.to_yaml(Path(row.output_dir) / "job.yaml")
        row.submission_id = job_runner.submit(row, Path(row.output_dir) / "job.yaml")
        row.runs, row.status = 1, "pending"
        session.add(row)
        session.flush()
        view = JobView.of(row)
    job_runner.wake()
    return view


@router.get("/finetune", response_model=list[JobView])
def list_jobs(project_id: ProjectId):
    with session_scope(database_url()) as session:
        return [JobView.of(r) for r in session.scalars(select(TuningJob).where(TuningJob.project_id == project_id)
                                                       .order_by(TuningJob.created_at))]


@router.get("/finetune/{job}", response_model=JobView)
def get_job(project_id: ProjectId, job: str):
    with session_scope(database_url()) as session:
        return JobView.of(_job(session, project_id, job))


@router.post("/finetune/{job}/stop", response_model=JobView)
def stop_job(project_id: ProjectId, job: str):
    with session_scope(database_url()) as session:
        row = _job(session, project_id, job)
        _check("stop", row)
        job_runner.stop(row.submission_id)
        row.status, row.updated_at = "stopping", now()
        view = JobView.of(row)
    job_runner.wake()
    return view


@router.post("/finetune/{job}/continue", response_model=JobView)
def continue_job(project_id: ProjectId, job: str):
    """Run again from the latest checkpoint: the step counter and the loss curve carry on."""
    with session_scope(database_url()) as session:
        row = _job(session, project_id, job)
        _check("continue", row)
        config_path = Path(row.output_dir) / "job.yaml"
        config = FinetuneConfig.from_yaml(config_path).model_copy(update={"resume": True})
        config.to_yaml(config_path)
        row.submission_id = job_runner.submit(row, config_path)
        row.runs, row.status, row.status_reason, row.updated_at = row.runs + 1, "starting", "", now()
        view = JobView.of(row)
    job_runner.wake()
    return view


@router.delete("/finetune/{job}", status_code=204)
def delete_job(project_id: ProjectId, job: str, confirm: str = ""):
    if confirm != "DELETE":
        raise PlatformError("MaaS.0400", reason="Deleting a tuning job needs the confirmation text DELETE.")
    with session_scope(database_url()) as session:
        row = _job(session, project_id, job)
        _check("delete", row)
        shutil.rmtree(row.output_dir, ignore_errors=True)
        session.delete(row)


@router.get("/finetune/{job}/metrics")
def job_metrics(project_id: ProjectId, job: str, since_step: int = 0) -> list[dict]:
    with session_scope(database_url()) as session:
        return [m for m in _metrics(_job(session, project_id, job)) if m.get("step", 0) > since_step]


@router.get("/finetune/{job}/logs", response_class=PlainTextResponse)
def job_logs(project_id: ProjectId, job: str, search: str = "", download: bool = False):
    with session_scope(database_url()) as session:
        row = _job(session, project_id, job)
    text = job_runner.logs(row)
    if search:
        text = "\n".join(line for line in text.splitlines() if search.lower() in line.lower()) + "\n"
    headers = {"Content-Disposition": f'attachment; filename="{row.name}.log"'} if download else {}
    return PlainTextResponse(text, headers=headers)


@router.get("/finetune/{job}/loss.png", response_class=FileResponse)
def job_loss_chart(project_id: ProjectId, job: str):
    with session_scope(database_url()) as session:
        row = _job(session, project_id, job)
    chart = Path(row.output_dir) / "loss.png"
    if not chart.is_file():
        raise PlatformError("MaaS.0404", what=f"A loss chart of job {row.name!r}")
    return FileResponse(chart, media_type="image/png")


@router.get("/finetune/{job}/checkpoints")
def job_checkpoints(project_id: ProjectId, job: str) -> list[dict]:
    with session_scope(database_url()) as session:
        row = _job(session, project_id, job)
    run_dir = Path(row.output_dir) / row.name
    return [{"name": d.name, "step": int(d.name.rsplit("_", 1)[-1]), "path": str(d)}
            for d in sorted(run_dir.glob("checkpoint_*")) if d.is_dir()]


class Promote(BaseModel):
    model_config = ConfigDict(extra="forbid")
    output_model: str | None = Field(None, description="Default: the job's output model.")


@router.post("/finetune/{job}/checkpoints/{checkpoint}/promote", status_code=201)
def promote_checkpoint(project_id: ProjectId, job: str, checkpoint: str, spec: Promote) -> dict:
    """Make an intermediate checkpoint a model version; only once the job has completed (spec §7.6)."""
    with session_scope(database_url()) as session:
        row = _job(session, project_id, job)
        if row.status != "completed":
            raise PlatformError("MaaS.0409", reason="Checkpoints become model versions only after the job completed.")
        folder = Path(row.output_dir) / row.name / checkpoint
        weights = folder / ("adapter" if row.job_type == "lora" else "model")
        if not weights.is_dir():
            raise PlatformError("MaaS.0404", what=f"Checkpoint {checkpoint!r}")
        version = my_models.register_version(session, project_id, spec.output_model or row.output_model, weights,
                                             "lora" if row.job_type == "lora" else "full",
                                             source=f"finetune:{row.id}", base_model=row.base_model)
    reload_accounting_blocking(job_runner.log)  # committed: a LoRA version is callable at once
    return version.model_dump()


def register_output(session, row: TuningJob, outputs: dict) -> str:
    """The job completed: its adapter (LoRA) or model (full, pretrain; LoRA with merge_lora: the merged model,
    deployable as its own service) becomes the next version of its output model. Returns the version id."""
    kind = "lora" if row.job_type == "lora" and not outputs.get("model") else "full"
    path = outputs.get("adapter") if kind == "lora" else outputs.get("model")
    if not path:
        raise RuntimeError(f"the job wrote no {'adapter' if kind == 'lora' else 'model'}: {outputs}")
    version = my_models.register_version(session, row.project_id, row.output_model, path, kind,
                                         source=f"finetune:{row.id}", base_model=row.base_model,
                                         description=f"tuned by {row.name}")
    return version.id


def status_file(row: TuningJob) -> dict:
    return read_status(Path(row.output_dir))
