"""Fine-tuning job schemas (spec §7): what a caller sends to create a job and what the API shows of one.
The job's training parameters become a `train_jobs.config.FinetuneConfig`, the one schema the entrypoint
reads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, Field, field_validator, model_validator

from cluster.my_models.schemas import ModelName
from cluster.runtime.running_time import running_seconds
from cluster.schemas import AutoStop, Notified, StrictModel, format_duration, pattern_rule
from cluster.state.db import TuningJob
from serve_apps.placement import NodeType
from train_jobs.config import JOB_NAME_PATTERN, JobType, LoraSettings
from train_jobs.progress import METRICS_FILE, read_status

NOTIFIABLE = ("pending", "starting", "running", "stopping", "stopped", "completed", "failed")
JobName = Annotated[str, pattern_rule(JOB_NAME_PATTERN, "name must be 1-64 characters: a letter first, then "
                                                        "letters, digits, - or _")]


class JobCreate(Notified):
    name: JobName = Field(description="1-64: a letter (CJK included) first, then letters, digits, - or _.")
    description: str = Field("", max_length=1000)
    model: str = Field(description="A catalog model, or a model of yours (id or name).")
    model_version: str | None = Field(None, description="Version of a model of yours (default: the latest).")
    type: JobType
    dataset: str = Field(description="A dataset id from POST /datasets, or a path on the platform's hosts.")
    format: str = Field("alpaca", description="moss, alpaca, sharegpt, csv or xlsx")
    output_model: ModelName = Field(description="The model of yours the result becomes a new version of.")
    epochs: int = Field(1, ge=1, le=1000)
    learning_rate: float = Field(2e-5, ge=0.0, le=0.1)
    global_batch_size: int = Field(32, ge=1)
    max_seq_len: int = Field(1024, ge=8)
    checkpoints: int = Field(1, ge=1, le=10, description="Checkpoints to keep: 1..min(iterations, 10).")
    workers: int = Field(1, ge=1, description="Ray Train workers (compute nodes).")
    node_type: NodeType = Field(None, description="Run the workers only on nodes with this custom Ray resource "
                                                  "(e.g. maas-gpu). None: any node.")
    spread_workers: bool = Field(False, description="One worker per node where the cluster allows; default: "
                                                    "packed onto as few nodes as possible.")
    max_failures: int = Field(3, ge=1, le=128, description="Automatic restarts from the latest checkpoint.")
    lora: LoraSettings = LoraSettings()
    merge_lora: bool = Field(False, description="LoRA only: the output version is the base model with the adapter "
                                                "merged in (a full model, deployable as its own service).")
    auto_stop: AutoStop = Field(None, description="Stop after this much running time: 1h, 2h, 4h, 6h or a custom "
                                                     "duration (90m, 12h). Queued or starting time is not counted.")
    notify_events: list[str] = Field([], description=f"Job statuses to notify: {', '.join(NOTIFIABLE)}.")

    @field_validator("notify_events")
    @classmethod
    def _events(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - set(NOTIFIABLE))
        if unknown:
            raise ValueError(f"unknown job statuses {unknown}; choose from {', '.join(NOTIFIABLE)}")
        return value

    @model_validator(mode="after")
    def _merge(self) -> "JobCreate":
        if self.merge_lora and self.type.value != "lora":
            raise ValueError("merge_lora applies to LoRA jobs only")
        return self


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
                   runs=row.runs, result_version=row.result_version, progress=latest_metrics(row),
                   params=row.params, resumes=read_status(Path(row.output_dir)).get("resumes", []),
                   auto_stop=format_duration(row.auto_stop_s),
                   running_seconds=running_seconds(row.run_seconds, row.running_since), created_at=row.created_at,
                   updated_at=row.updated_at)


class Promote(StrictModel):
    output_model: str | None = Field(None, description="Default: the job's output model.")


def metrics(row: TuningJob) -> list[dict]:
    try:
        return [json.loads(line) for line in (Path(row.output_dir) / METRICS_FILE).read_text().splitlines() if line]
    except OSError:
        return []


def latest_metrics(row: TuningJob) -> dict:
    records = metrics(row)
    return records[-1] if records else {}
