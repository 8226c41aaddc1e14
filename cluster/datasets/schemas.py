"""What the API shows of a dataset upload."""

from __future__ import annotations

from pydantic import BaseModel, Field


class DatasetView(BaseModel):
    id: str = Field(description="What a job's `dataset` names (ds-...).")
    name: str = Field(description="The uploaded file's name.")
    bytes: int
    created_at: int = Field(description="Upload time, seconds since the epoch.")
    last_used_at: int = Field(description="The last time a job named it (or its upload).")
    expires_at: int | None = Field(description="When it is deleted unless a job names it before; None while a "
                                               "job may still read it.")
    used_by: list[str] = Field(description="Jobs that may still read it (tuning jobs that can run or continue, "
                                           "active compression jobs): it is neither deleted nor expired meanwhile.")
