"""Request models of the gateway: vLLM's protocol models, made strict (unknown fields and a missing
`model` are refused with 400, as the product does), plus the rerank request of spec §4.8.5."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from serve_apps.ray_compat import ChatCompletionRequest as _Chat
from serve_apps.ray_compat import CompletionRequest as _Completion
from serve_apps.ray_compat import EmbeddingCompletionRequest as _Embedding

_STRICT = ConfigDict(extra="forbid")


class ChatRequest(_Chat):
    model_config = _STRICT
    model: str


class CompletionRequest(_Completion):
    model_config = _STRICT
    model: str


class EmbeddingRequest(_Embedding):
    model_config = _STRICT
    model: str


class RerankRequest(BaseModel):
    model_config = _STRICT
    model: str
    query: str = Field(min_length=1)
    documents: list[str] = Field(min_length=1)
    top_n: int | None = Field(None, ge=1, description="Return only the best N results.")
    return_documents: bool = True
