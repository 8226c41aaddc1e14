"""Compression job schemas (spec §6.2): what a caller sends to create a job and what the API shows of one.
The job's parameters become a `quantize.config.CompressConfig`, the one schema the entrypoint reads."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, Field, field_validator, model_validator

from cluster.my_models.schemas import ModelName
from cluster.runtime.running_time import running_seconds
from cluster.schemas import AutoStop, Notified, format_duration, pattern_rule
from cluster.state.db import CompressionJob
from quantize.config import JOB_NAME_PATTERN, Strategy
from train_jobs.progress import read_status

NOTIFIABLE = ("pending", "starting", "running", "stopping", "stopped", "completed", "failed")
JobName = Annotated[str, pattern_rule(JOB_NAME_PATTERN, "name must be 1-64 characters: a letter first, then "
                                                        "letters, digits, - or _")]


class CompressionCreate(Notified):
    name: JobName = Field(description="1-64: a letter (CJK included) first, then letters, digits, - or _.")
    description: str = Field("", max_length=1000)
    model: str = Field(description="A catalog model, or a model of yours (id or name).")
    model_version: str | None = Field(None, description="Version of a model of yours (default: the latest).")
    strategy: Strategy
    migration_strength: float | None = Field(None, ge=0.0, le=1.0, description="SmoothQuant-W8A8 only: 0-1, "
                                                                              "default 0.5.")
    output_model: ModelName = Field(description="The model of yours the result becomes a new version of.")
    dataset: str | None = Field(None, description="Calibration data: a dataset id from POST /datasets, or a path "
                                                  "under a data root; default: the built-in calibration set.")
    format: str = Field("alpaca", description="moss, alpaca, sharegpt, csv or xlsx (with dataset)")
    num_samples: int = Field(64, ge=1, le=4096, description="Calibration samples.")
    max_seq_len: int = Field(512, ge=16, le=32768, description="Calibration sequence length (tokens).")
    auto_stop: AutoStop = Field(None, description="Stop after this much running time: 1h, 2h, 4h, 6h or a custom "
                                                     "duration (90m, 12h). Queued time is not counted.")
    notify_events: list[str] = Field([], description=f"Job statuses to notify: {', '.join(NOTIFIABLE)}.")

    @field_validator("notify_events")
    @classmethod
    def _events(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - set(NOTIFIABLE))
        if unknown:
            raise ValueError(f"unknown job statuses {unknown}; choose from {', '.join(NOTIFIABLE)}")
        return value

    @model_validator(mode="after")
    def _strength(self) -> "CompressionCreate":
        if self.migration_strength is not None and self.strategy is not Strategy.SMOOTHQUANT_W8A8:
            raise ValueError("migration_strength applies to smoothquant-w8a8 only")
        return self


class CompressionView(BaseModel):
    id: str
    project_id: str
    name: str
    description: str
    strategy: str
    model: str
    model_version: str | None
    base_model: str
    output_model: str
    status: str
    status_reason: str
    runs: int
    result_version: str
    progress: dict = Field(description="percent, step / total_steps (layer groups calibrated), elapsed_s, eta_s")
    outputs: dict = Field(description="Once completed: the model directory, bytes on disk, compression seconds.")
    params: dict
    auto_stop: str | None
    running_seconds: int
    created_at: int
    updated_at: int

    @classmethod
    def of(cls, row: CompressionJob) -> "CompressionView":
        status = read_status(Path(row.output_dir))
        progress = {k: status.get(k) for k in ("phase", "percent", "step", "total_steps", "elapsed_s", "eta_s")
                    if k in status}
        return cls(id=row.id, project_id=row.project_id, name=row.name, description=row.description,
                   strategy=row.strategy, model=row.model_ref, model_version=row.model_version,
                   base_model=row.base_model, output_model=row.output_model, status=row.status,
                   status_reason=row.status_reason, runs=row.runs, result_version=row.result_version,
                   progress=progress, outputs=status.get("outputs") or {}, params=row.params,
                   auto_stop=format_duration(row.auto_stop_s),
                   running_seconds=running_seconds(row.run_seconds, row.running_since),
                   created_at=row.created_at, updated_at=row.updated_at)
