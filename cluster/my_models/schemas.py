"""My-model schemas (spec §6.1): a model of the project's own and its numbered versions."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, Field

from cluster.schemas import StrictModel
from cluster.state.db import ModelVersion
from serve_apps.catalog import BUILTIN_MODELS, CatalogModel

KINDS = ("full", "lora")
# Starts with a letter of any script (CJK included); then letters, digits, _, - or .
_NAME = re.compile(r"^[^\W\d_][\w.-]{0,63}$")


def check_name(value: str) -> str:
    if not _NAME.fullmatch(value):
        raise ValueError("name must be 1-64 characters, start with a letter (CJK included) and contain only "
                         "letters, digits, _, - or .")
    if any(value == model.id for model in BUILTIN_MODELS):
        raise ValueError(f"name {value!r} is a catalog model's id; choose another")
    return value


ModelName = Annotated[str, AfterValidator(check_name)]


class ModelCreate(StrictModel):
    name: ModelName = Field(description="1-64 characters: starts with a letter (CJK included); letters, digits, _ - .")
    description: str = Field("", max_length=100)
    base_model: str = Field(description="The catalog model the weights derive from.")
    path: str = Field(description="Absolute path of a Hugging Face-format directory on the platform's hosts.")


class VersionCreate(StrictModel):
    description: str = Field("", max_length=100)
    path: str = Field(description="Absolute path of a Hugging Face-format directory on the platform's hosts.")


class VersionView(BaseModel):
    id: str
    model_id: str
    version: int = Field(description="Assigned automatically: one more than the highest existing version.")
    description: str
    path: str = Field(description="Where the copied weights live.")
    kind: str = Field(description="full or lora")
    source: str = Field(description="upload, finetune:<job id> or compress:<job id>")
    quantization: str | None = Field(None, description="The compression strategy of a compressed version "
                                                       "(smoothquant-w8a8, awq-w4a16, gptq-w4a16).")
    status: str
    created_at: int

    @classmethod
    def of(cls, row: ModelVersion) -> "VersionView":
        return cls(id=row.id, model_id=row.model_id, version=row.version, description=row.description,
                   path=row.path, kind=row.kind, source=row.source, quantization=row.quantization,
                   status=row.status, created_at=row.created_at)


class ModelView(BaseModel):
    id: str
    project_id: str
    name: str
    description: str
    base_model: str
    created_at: int
    versions: list[VersionView]


@dataclass(frozen=True)
class ResolvedModel:
    """A my-model version ready to deploy: `card` is the base's card with the engine's model id and
    `source` = the version's directory (for a LoRA adapter, `base_path` holds the base weights)."""

    card: CatalogModel
    path: Path
    kind: str
    base_model: str
    base_path: Path
    model_id: str
    version: int
    quantization: str | None = None  # compressed versions deploy only: no tuning, no further compression
