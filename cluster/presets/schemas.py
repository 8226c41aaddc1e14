"""Preset service schemas (spec §4.2-4.3): how a platform model is offered, and a project's standing."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from cluster.schemas import StrictModel
from cluster.state.db import MAX_BIGINT

DEFAULT_RPM = 10_000  # generous defaults for a self-hosted platform; an admin tightens them per model
DEFAULT_TPM = 10_000_000


class PresetSpec(StrictModel):
    kind: Literal["free", "commercial"]
    expires_at: int | None = Field(None, description="Free mode 1: free until this time (epoch seconds).")
    free_quota_tokens: int | None = Field(None, gt=0, le=MAX_BIGINT,
                                          description="Free mode 2: tokens a project may claim.")
    rpm: int = Field(DEFAULT_RPM, gt=0, le=MAX_BIGINT, description="Model-level requests per minute, per project.")
    tpm: int = Field(DEFAULT_TPM, gt=0, le=MAX_BIGINT, description="Model-level tokens per minute, per project.")

    @model_validator(mode="after")
    def _modes(self) -> "PresetSpec":
        if self.kind == "commercial" and (self.expires_at is not None or self.free_quota_tokens is not None):
            raise ValueError("a commercial preset has neither an expiry time nor a free quota")
        return self


class PresetView(PresetSpec):
    model_id: str


class ProjectPresetView(PresetView):
    activated: bool = Field(description="Commercial: activated. Free with a quota: claimed.")
    frozen: bool


class FreezeSpec(StrictModel):
    project_id: str
    frozen: bool = True


class ActivateSpec(StrictModel):
    models: list[str] | None = Field(None, description="Commercial presets to activate; default: all of them.")
