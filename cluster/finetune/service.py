"""Fine-tuning jobs (spec §7): create (the dataset validated before any compute, by `cluster.datasets`), stop,
continue from the latest checkpoint, delete; checkpoints and their promotion. No HTTP here.

A job's parameters become a `train_jobs.config.FinetuneConfig`, written to `<output_dir>/job.yaml` and run
as a Ray Job (`runtime.jobs`). When it completes, its output is registered as a new version of the output
model in "my models" (a LoRA adapter or a full model).
"""

from __future__ import annotations

import re
import shutil
import uuid
from pathlib import Path

from pydantic import ValidationError
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from cluster.datasets import service as datasets
from cluster.finetune.schemas import JobCreate, JobView
from cluster.my_models import registry
from cluster.my_models.weights import base_path
from cluster.projects import quotas as project_quotas
from cluster.runtime import jobs
from cluster.schemas import auto_stop_seconds
from cluster.settings import get_settings
from cluster.state.db import JobEvent, TuningJob, now
from cluster.state.lookup import lock_project, owned
from serve_apps.catalog import BUILTIN_MODELS
from serve_apps.errors import PlatformError
from train_jobs.config import FinetuneConfig
from train_jobs.datasets import report

_CATALOG = {m.id: m for m in BUILTIN_MODELS}
_CHECKPOINT = re.compile(r"checkpoint_[0-9]{1,12}")
JOB_SUPPORT = {"full": "finetune-full", "lora": "finetune-lora", "pretrain": "pretrain"}
# What each state allows (spec §7.5); everything else is refused.
ALLOWED = {"stop": {"creating", "pending", "starting", "running", "alarm"}, "continue": {"stopped"},
           "delete": {"stopped", "completed", "failed"}}


def find(session: Session, project_id: str, ref: str) -> TuningJob:
    return owned(session, TuningJob, project_id, ref, "Tuning job")


def check(action: str, row: TuningJob) -> None:
    if row.status not in ALLOWED[action]:
        allowed = ", ".join(sorted(ALLOWED[action]))
        raise PlatformError("MaaS.0409", reason=f"Cannot {action} the job {row.name!r} while it is {row.status}; "
                                                f"{action} is allowed from: {allowed}.")


# -- creating and running ------------------------------------------------------------------------------
def _base(session: Session, project_id: str, spec: JobCreate) -> tuple[str, Path]:
    """(catalog family, weights directory) of the model to tune."""
    if spec.model in _CATALOG:
        card = _CATALOG[spec.model]
        if JOB_SUPPORT[spec.type.value] not in [j.value for j in card.supported_jobs]:
            raise PlatformError("MaaS.0400", reason=f"{spec.model} does not support {spec.type.value} jobs.")
        return card.id, base_path(card)
    resolved = registry.resolve_version(session, project_id, spec.model, spec.model_version)
    if resolved.kind != "full":
        raise PlatformError("MaaS.0400", reason="A LoRA version cannot be tuned further; tune its base model.")
    if resolved.quantization:
        raise PlatformError("MaaS.0400", reason=f"Version {resolved.version} of {spec.model!r} is compressed "
                                                f"({resolved.quantization}): compressed models deploy only; tune "
                                                "the original.")
    return resolved.base_model, resolved.path


def template_kwargs(family: str) -> dict:
    """What the gateway puts in chat_template_kwargs when the caller does not: train with the same."""
    card = _CATALOG.get(family)
    return {card.thinking_kwarg: card.thinking_default} if card is not None and card.thinking_kwarg else {}


def _config(row: TuningJob, weights: Path, spec: JobCreate) -> FinetuneConfig:
    try:
        return FinetuneConfig(
            name=spec.name, job_type=spec.type.value, base_model_path=weights, dataset_path=row.dataset_path,
            dataset_format=spec.format, output_dir=row.output_dir, epochs=spec.epochs,
            learning_rate=spec.learning_rate, global_batch_size=spec.global_batch_size,
            max_seq_len=spec.max_seq_len, checkpoints_to_keep=spec.checkpoints, num_workers=spec.workers,
            node_type=spec.node_type, spread_workers=spec.spread_workers,
            max_failures=spec.max_failures, lora=spec.lora, merge_lora=spec.merge_lora,
            dataset_max_rows=get_settings().dataset_max_rows,
            chat_template_kwargs=template_kwargs(row.base_model))
    except ValidationError as exc:
        reason = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'job'}: {e['msg']}" for e in exc.errors())
        raise PlatformError("MaaS.0400", reason=reason) from None


def create_job(session: Session, project_id: str, spec: JobCreate) -> JobView:
    """Validate the dataset and the parameters first (no compute is spent on a bad job), then run it."""
    project_quotas.check_job(session, project_id, spec.workers, spec.global_batch_size, spec.max_seq_len)
    project_quotas.check_active_jobs(session, project_id)  # before the dataset is read; again under the lock
    project_quotas.check_storage(session, project_id, 1)  # the job writes checkpoints: it needs room left
    dataset = datasets.dataset_path(project_id, spec.dataset)
    if session.scalar(select(TuningJob.id).where(TuningJob.project_id == project_id, TuningJob.name == spec.name)):
        raise PlatformError("MaaS.0409", reason=f"A tuning job named {spec.name!r} already exists.")
    base_model, weights = _base(session, project_id, spec)
    job_id = "ft-" + uuid.uuid4().hex[:12]
    row = TuningJob(id=job_id, project_id=project_id, name=spec.name, description=spec.description,
                    job_type=spec.type.value, model_ref=spec.model, model_version=spec.model_version,
                    base_model=base_model, dataset_path=str(dataset), dataset_format=spec.format,
                    params=spec.model_dump(mode="json", exclude={"name", "description", "model", "type",
                                                                  "notify_url", "notify_events"}),
                    auto_stop_s=auto_stop_seconds(spec.auto_stop),
                    notify_url=spec.notify_url, notify_events=spec.notify_events,
                    output_model=spec.output_model, status="creating", status_reason="", runs=0,
                    submission_id="", result_version="", data_count=0, iterations=0,
                    output_dir=str(get_settings().finetune_dir() / project_id / job_id))
    config = _config(row, weights, spec)
    checked = datasets.check(dataset, config.dataset_format.value, config.dataset_kind)
    if checked.errors:  # the job exists and failed in its validating phase, with the report
        row.status = "failed"
        heading = "dataset validation failed\n"
        row.status_reason = heading + report(checked.errors, checked.stopped, max_chars=4000 - len(heading))
        session.add(row)
        session.flush()
        return JobView.of(row)
    try:
        config = config.with_data_count(checked.samples)
    except ValidationError as exc:
        raise PlatformError("MaaS.0400", reason="; ".join(e["msg"] for e in exc.errors())) from None
    row.data_count, row.iterations = checked.samples, config.iterations(checked.samples)
    lock_project(session, project_id)  # parallel creates count one after another
    project_quotas.check_active_jobs(session, project_id)
    Path(row.output_dir).mkdir(parents=True, exist_ok=True)
    config.to_yaml(Path(row.output_dir) / "job.yaml")
    row.submission_id = jobs.submit(row, Path(row.output_dir) / "job.yaml")
    row.runs, row.status = 1, "pending"
    session.add(row)
    session.flush()
    return JobView.of(row)


def _claim(session: Session, row: TuningJob, action: str, values: dict) -> None:
    """Apply `values` only if the job is still in the status `check(action)` accepted (the job-sync thread
    writes statuses concurrently: a stop must never overwrite a "completed" it has not seen)."""
    done = session.execute(update(TuningJob).where(TuningJob.id == row.id, TuningJob.status == row.status)
                           .values(**values, updated_at=now()).execution_options(synchronize_session=False))
    if done.rowcount != 1:
        raise PlatformError("MaaS.0409", reason=f"The job {row.name!r} changed status meanwhile; look again "
                                                f"before you {action} it.")
    session.refresh(row)


def stop_job(session: Session, project_id: str, job: str) -> JobView:
    row = find(session, project_id, job)
    check("stop", row)
    _claim(session, row, "stop", {"status": "stopping"})
    jobs.stop(row.submission_id)
    return JobView.of(row)


def continue_job(session: Session, project_id: str, job: str) -> JobView:
    """Run again from the latest checkpoint: the step counter and the loss curve carry on."""
    row = find(session, project_id, job)
    check("continue", row)
    lock_project(session, project_id)  # a continued job is active again: it counts as a create does
    project_quotas.check_active_jobs(session, project_id)
    _claim(session, row, "continue", {"status": "starting", "status_reason": ""})
    config_path = Path(row.output_dir) / "job.yaml"
    config = FinetuneConfig.from_yaml(config_path).model_copy(update={"resume": True})
    config.to_yaml(config_path)
    row.submission_id = jobs.submit(row, config_path)
    row.runs += 1
    return JobView.of(row)


def delete_job(session: Session, project_id: str, job: str) -> None:
    row = find(session, project_id, job)
    check("delete", row)
    shutil.rmtree(row.output_dir, ignore_errors=True)
    session.execute(delete(JobEvent).where(JobEvent.job_id == row.id))
    session.delete(row)


# -- outputs -------------------------------------------------------------------------------------------
def checkpoints(row: TuningJob) -> list[dict]:
    run_dir = Path(row.output_dir) / row.name
    return [{"name": d.name, "step": int(d.name.rsplit("_", 1)[-1]), "path": str(d)}
            for d in sorted(run_dir.glob("checkpoint_*")) if _CHECKPOINT.fullmatch(d.name) and d.is_dir()]


def promote_checkpoint(session: Session, project_id: str, job: str, checkpoint: str,
                       output_model: str | None) -> dict:
    """Make an intermediate checkpoint a model version; only once the job has completed (spec §7.6)."""
    row = find(session, project_id, job)
    if row.status != "completed":
        raise PlatformError("MaaS.0409", reason="Checkpoints become model versions only after the job completed.")
    kept = [c["name"] for c in checkpoints(row)]
    folder = Path(row.output_dir) / row.name / checkpoint
    weights = folder / ("adapter" if row.job_type == "lora" else "model")
    if checkpoint not in kept or not weights.is_dir():  # one answer for any other value: no path is probed
        raise PlatformError("MaaS.0400", reason=(
            f"A checkpoint to promote is one of this job's own, checkpoint_<step>: {', '.join(kept) or 'none kept'}."))
    version = registry.register_version(session, project_id, output_model or row.output_model, weights,
                                        "lora" if row.job_type == "lora" else "full",
                                        source=f"finetune:{row.id}", base_model=row.base_model)
    return version.model_dump()


def register_output(session: Session, row: TuningJob, outputs: dict) -> str:
    """The job completed: its adapter (LoRA) or model (full, pretrain; LoRA with merge_lora: the merged model,
    deployable as its own service) becomes the next version of its output model. Returns the version id."""
    kind = "lora" if row.job_type == "lora" and not outputs.get("model") else "full"
    path = outputs.get("adapter") if kind == "lora" else outputs.get("model")
    if not path:
        raise RuntimeError(f"the job wrote no {'adapter' if kind == 'lora' else 'model'}: {outputs}")
    version = registry.register_version(session, row.project_id, row.output_model, path, kind,
                                        source=f"finetune:{row.id}", base_model=row.base_model,
                                        description=f"tuned by {row.name}")
    return version.id
