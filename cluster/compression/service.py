"""Compression jobs (spec §6.2): create (every rule checked before any compute), stop, delete; the
completed job's model becomes the next version of the output model. No HTTP here.

A job's parameters become a `quantize.config.CompressConfig`, written to `<output_dir>/job.yaml` and run as a
Ray Job by the compression environment's python (`runtime.jobs`, MAAS_COMPRESS_PYTHON).
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

from pydantic import ValidationError
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from cluster.compression.schemas import CompressionCreate, CompressionView
from cluster.datasets import service as datasets
from cluster.finetune.service import template_kwargs
from cluster.my_models import registry
from cluster.my_models.weights import base_path
from cluster.projects import quotas as project_quotas
from cluster.runtime import jobs
from cluster.schemas import auto_stop_seconds
from cluster.settings import get_settings
from cluster.state.db import CompressionJob, JobEvent, now
from cluster.state.lookup import lock_project, owned
from quantize.config import CompressConfig, compressibility
from serve_apps.catalog import BUILTIN_MODELS, Job
from serve_apps.errors import PlatformError
from train_jobs.datasets import report

_CATALOG = {m.id: m for m in BUILTIN_MODELS}
ENTRYPOINT = "quantize.compress"
# What each state allows; a compression job is not resumable (a stopped one is run again as a new job).
ALLOWED = {"stop": {"creating", "pending", "starting", "running", "alarm"},
           "delete": {"stopped", "completed", "failed"}}


def find(session: Session, project_id: str, ref: str) -> CompressionJob:
    return owned(session, CompressionJob, project_id, ref, "Compression job")


def check(action: str, row: CompressionJob) -> None:
    if row.status not in ALLOWED[action]:
        allowed = ", ".join(sorted(ALLOWED[action]))
        raise PlatformError("MaaS.0409", reason=f"Cannot {action} the job {row.name!r} while it is {row.status}; "
                                                f"{action} is allowed from: {allowed}.")


def _source(session: Session, project_id: str, spec: CompressionCreate) -> tuple[str, Path]:
    """(catalog family, weights directory) of the model to compress."""
    if spec.model in _CATALOG:
        card = _CATALOG[spec.model]
        if Job.COMPRESS not in card.supported_jobs:
            raise PlatformError("MaaS.0400", reason=f"{spec.model} does not support compression.")
        return card.id, base_path(card)
    resolved = registry.resolve_version(session, project_id, spec.model, spec.model_version)
    if resolved.kind != "full":
        raise PlatformError("MaaS.0400", reason="A LoRA version cannot be compressed; compress a full version "
                                                "(a LoRA job with merge_lora gives one).")
    if resolved.quantization:
        raise PlatformError("MaaS.0400", reason=f"Version {resolved.version} of {spec.model!r} is already "
                                                f"compressed ({resolved.quantization}); compress the original.")
    if Job.COMPRESS not in _CATALOG.get(resolved.base_model, resolved.card).supported_jobs:
        raise PlatformError("MaaS.0400", reason=f"Models based on {resolved.base_model} do not support compression.")
    return resolved.base_model, resolved.path


def _fits(weights: Path, spec: CompressionCreate) -> None:
    """The strategy must suit the model's architecture and shapes: refused before any compute, with the reason."""
    try:
        config = json.loads((weights / "config.json").read_text())
    except (OSError, ValueError):
        raise PlatformError("MaaS.0400", reason=f"{spec.model} has no readable config.json.") from None
    reason = compressibility(config, spec.strategy)
    if reason:
        raise PlatformError("MaaS.0400", reason=f"{spec.model} cannot be compressed with {spec.strategy.value}: "
                                                f"{reason}.")


def create_job(session: Session, project_id: str, spec: CompressionCreate) -> CompressionView:
    project_quotas.check_job(session, project_id, seq_len=spec.max_seq_len)
    project_quotas.check_active_jobs(session, project_id)  # before any file is read; again under the lock
    project_quotas.check_storage(session, project_id, 1)  # the job writes a model: it needs room left
    if session.scalar(select(CompressionJob.id).where(CompressionJob.project_id == project_id,
                                                      CompressionJob.name == spec.name)):
        raise PlatformError("MaaS.0409", reason=f"A compression job named {spec.name!r} already exists.")
    family, weights = _source(session, project_id, spec)
    _fits(weights, spec)
    dataset = datasets.dataset_path(project_id, spec.dataset) if spec.dataset else None
    job_id = "cp-" + uuid.uuid4().hex[:12]
    output_dir = get_settings().compression_dir(project_id) / job_id
    try:
        config = CompressConfig(
            name=spec.name, strategy=spec.strategy, base_model_path=weights, output_dir=output_dir,
            migration_strength=0.5 if spec.migration_strength is None else spec.migration_strength,
            dataset_path=dataset, dataset_format=spec.format, num_samples=spec.num_samples,
            max_seq_len=spec.max_seq_len, chat_template_kwargs=template_kwargs(family),
            dataset_max_rows=get_settings().dataset_max_rows)
    except ValidationError as exc:
        reason = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'job'}: {e['msg']}" for e in exc.errors())
        raise PlatformError("MaaS.0400", reason=reason) from None
    if dataset is not None:
        _validate_dataset(dataset, spec.format)
    row = CompressionJob(
        id=job_id, project_id=project_id, name=spec.name, description=spec.description,
        strategy=spec.strategy.value, model_ref=spec.model, model_version=spec.model_version, base_model=family,
        source_path=str(weights), dataset_path=str(dataset) if dataset else None,
        dataset_format=spec.format if dataset else None,
        params=spec.model_dump(mode="json", include={"migration_strength", "num_samples", "max_seq_len", "format"}),
        output_model=spec.output_model, output_dir=str(output_dir), status="creating", status_reason="",
        submission_id="", runs=0, result_version="", auto_stop_s=auto_stop_seconds(spec.auto_stop),
        notify_url=spec.notify_url, notify_events=spec.notify_events)
    lock_project(session, project_id)  # parallel creates count one after another
    project_quotas.check_active_jobs(session, project_id)
    output_dir.mkdir(parents=True, exist_ok=True)
    config.to_yaml(output_dir / "job.yaml")
    row.submission_id = jobs.submit(row, output_dir / "job.yaml", module=ENTRYPOINT,
                                    python=str(compress_python()),
                                    memory_mb=get_settings().compress_driver_memory_mb)
    row.runs, row.status = 1, "pending"
    session.add(row)
    session.flush()
    return CompressionView.of(row)


def compress_python() -> Path:
    python = get_settings().compress_python
    if not python.is_file():
        raise PlatformError("MaaS.0503", reason=f"The compression environment is not installed ({python} is "
                                                "missing): run `make install`, or set MAAS_COMPRESS_PYTHON.")
    return python


def _validate_dataset(path: Path, fmt: str) -> None:
    """A bad calibration dataset is refused with its (first) bad rows, before any compute."""
    checked = datasets.check(path, fmt)
    if checked.errors:
        raise PlatformError("MaaS.0400", reason="calibration dataset is invalid\n" + report(checked.errors,
                                                                                             checked.stopped))


def stop_job(session: Session, project_id: str, job: str) -> CompressionView:
    row = find(session, project_id, job)
    check("stop", row)
    done = session.execute(update(CompressionJob).where(CompressionJob.id == row.id,
                                                        CompressionJob.status == row.status)
                           .values(status="stopping", updated_at=now()).execution_options(synchronize_session=False))
    if done.rowcount != 1:
        raise PlatformError("MaaS.0409", reason=f"The job {row.name!r} changed status meanwhile; look again.")
    session.refresh(row)
    jobs.stop(row.submission_id)
    return CompressionView.of(row)


def delete_job(session: Session, project_id: str, job: str) -> None:
    row = find(session, project_id, job)
    check("delete", row)
    shutil.rmtree(row.output_dir, ignore_errors=True)  # the registered version is a copy: it stays
    session.execute(delete(JobEvent).where(JobEvent.job_id == row.id))
    session.delete(row)


def register_output(session: Session, row: CompressionJob, outputs: dict) -> str:
    """The job completed: its compressed model becomes the next version of its output model, marked with its
    strategy (deploy only). Returns the version id."""
    path = outputs.get("model")
    if not path:
        raise RuntimeError(f"the job wrote no model: {outputs}")
    version = registry.register_version(
        session, row.project_id, row.output_model, path, "full", source=f"compress:{row.id}",
        base_model=row.base_model, description=f"{row.strategy} of {row.model_ref}"[:100],
        roots=[get_settings().compression_dir(row.project_id)], quantization=row.strategy)
    return version.id
