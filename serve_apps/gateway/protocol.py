"""Request models of the gateway: vLLM's protocol models, made strict (unknown fields and a missing
`model` are refused with 400, as the product does), plus the rerank request of spec §4.8.5."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator
from vllm.entrypoints.anthropic.protocol import AnthropicMessagesRequest as _Messages
from vllm.entrypoints.openai.responses.protocol import ResponsesRequest as _Responses
from serve_apps.ray_compat import ChatCompletionRequest as _Chat
from serve_apps.ray_compat import CompletionRequest as _Completion
from serve_apps.ray_compat import EmbeddingCompletionRequest as _Embedding

_STRICT = ConfigDict(extra="forbid")
MAX_CHOICES = 16


ROLES = ("system", "developer", "user", "assistant", "tool")
TokenCount = Annotated[int | None, Field(ge=1, description="At least 1: a call that may produce nothing is refused.")]
Choices = Annotated[int | None, Field(ge=1, le=MAX_CHOICES)]


class ChatRequest(_Chat):
    model_config = _STRICT
    model: str
    max_tokens: TokenCount = None
    max_completion_tokens: TokenCount = None
    n: Choices = 1

    @field_validator("messages")
    @classmethod
    def _roles(cls, messages: list) -> list:
        for index, message in enumerate(messages):
            role = message.get("role") if isinstance(message, dict) else getattr(message, "role", None)
            if role not in ROLES:
                raise ValueError(f"messages[{index}].role must be one of {', '.join(ROLES)}, not {role!r}")
        return messages


class CompletionRequest(_Completion):
    model_config = _STRICT
    model: str
    max_tokens: TokenCount = 16
    n: Annotated[int, Field(ge=1, le=MAX_CHOICES)] = 1


class ResponsesRequest(_Responses):
    """POST /v1/responses (OpenAI Responses API), validated again by the engine from its JSON."""

    model_config = _STRICT
    model: str
    max_output_tokens: TokenCount = None


class MessagesRequest(_Messages):
    """POST /v1/messages (Anthropic Messages API), validated again by the engine from its JSON."""

    model_config = _STRICT
    max_tokens: Annotated[int, Field(ge=1)]


def choices(body) -> int:
    """How many completions one call generates (`n`, or completions' `best_of` when larger)."""
    return max(getattr(body, "n", None) or 1, getattr(body, "best_of", None) or 1)


def token_ids(body) -> int:
    """How many token ids a completions prompt or an embeddings input sends (`[1, 2]` or `[[1, 2], [3]]`):
    tokens to reserve and count, and input no moderation can read."""
    value = getattr(body, "prompt", None) if hasattr(body, "prompt") else getattr(body, "input", None)
    if not isinstance(value, list):
        return 0
    return sum(1 if isinstance(v, int) else len(v) if isinstance(v, list) else 0 for v in value)


def completion_budget(body) -> int | None:
    """The most tokens a call may generate, over all its choices: what admission reserves against TPM (None:
    no maximum given, the rest of the context is reserved)."""
    per_choice = (getattr(body, "max_completion_tokens", None) or getattr(body, "max_tokens", None)
                  or getattr(body, "max_output_tokens", None))
    return None if per_choice is None else per_choice * choices(body)


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
