"""What the console's own routes accept beyond the rooms' schemas: the playground's chat request (spec §4.3
Table 4-3: temperature 0-2, top_p 0.1-1, top_k 1-1000 default 20)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from cluster.schemas import StrictModel

TEMPERATURE_DEFAULT = 0.7
TOP_P_DEFAULT = 0.8
TOP_K_DEFAULT = 20


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=100_000)


class PlaygroundChat(StrictModel):
    model: str = Field(min_length=1, max_length=128)
    messages: list[ChatMessage] = Field(min_length=1, max_length=200)
    temperature: float = Field(TEMPERATURE_DEFAULT, ge=0.0, le=2.0)
    top_p: float = Field(TOP_P_DEFAULT, ge=0.1, le=1.0)
    top_k: int = Field(TOP_K_DEFAULT, ge=1, le=1000)
    thinking: bool = False
    max_tokens: int = Field(512, ge=1, le=8192)
