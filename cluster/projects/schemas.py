"""Project (tenant) schemas."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field

from cluster.schemas import StrictModel, pattern_rule

ProjectIdField = Annotated[str, pattern_rule(r"^[a-z0-9][a-z0-9_-]{0,63}$", "id must be 1-64 of a-z 0-9 _ -, "
                                                                             "starting with a letter or digit")]


class ProjectCreate(StrictModel):
    id: ProjectIdField = Field(description="1-64 of a-z 0-9 _ -, starting with a letter or digit; used in URLs.")
    name: str = Field("", max_length=64, description="Display name (defaults to the id).")


class ProjectView(BaseModel):
    id: str
    name: str
    created_at: int


QUOTA_FIELDS = ("services", "instances", "workers", "models", "batch_size", "seq_len", "model_disk_mb", "jobs",
                "storage_mb", "datasets")
_Quota = Field(None, ge=1, le=1_000_000)


class QuotaSpec(StrictModel):
    """An admin's per-project quotas; a field left out (or null) is the platform's default (MAAS_QUOTA_*)."""

    services: int | None = _Quota
    instances: int | None = _Quota
    workers: int | None = _Quota
    models: int | None = _Quota
    batch_size: int | None = _Quota
    seq_len: int | None = _Quota
    model_disk_mb: int | None = Field(None, ge=1, le=10**9, description="MiB of my models' weights, all versions.")
    jobs: int | None = Field(None, ge=1, le=1000, description="Active tuning and compression jobs together.")
    storage_mb: int | None = Field(None, ge=1, le=10**9, description="MiB of dataset uploads, job outputs and "
                                                                     "my models' versions together.")
    datasets: int | None = Field(None, ge=1, le=100_000, description="Dataset uploads kept.")


class QuotaView(BaseModel):
    """What a project may use: model services, engine instances over its running services, Ray Train workers
    of one job, my models, a job's global batch size and sequence length, MiB of my models' weights, active
    jobs (tuning and compression together), MiB of all its storage, dataset uploads."""

    project_id: str
    services: int
    instances: int
    workers: int
    models: int
    batch_size: int
    seq_len: int
    model_disk_mb: int
    jobs: int
    storage_mb: int
    datasets: int
    overrides: list[str] = Field(description="The quotas an admin set for this project (the rest: defaults).")
