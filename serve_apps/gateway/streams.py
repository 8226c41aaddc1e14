"""Relaying an engine's SSE stream to the caller: usage capture, moderation of the streamed output, and the
renames the product needs (`reasoning` -> `reasoning_content`).

Chunks arrive as strings `data: {...}\n\n`, in batches. They are only parsed as JSON when they must be:
the usage chunk always (accounting), every chunk when the output is moderated.
"""

from __future__ import annotations

import json
import time
from typing import AsyncIterator

from serve_apps.errors import OpenAIError
from serve_apps.gateway.admission import Call
from serve_apps.moderation import Moderator, StreamCheck, message_text
from serve_apps.ray_compat import ErrorResponse


def _payload(chunk: str) -> dict | None:
    text = chunk.strip()
    if not text.startswith("data: {"):
        return None
    try:
        return json.loads(text[6:])
    except ValueError:
        return None


def _delta_text(payload: dict) -> str:
    """Every text a chunk carries: content, reasoning, tool-call arguments (all are moderated)."""
    parts = []
    for choice in payload.get("choices") or []:
        delta = choice.get("delta") or {}
        parts.append(message_text(delta) or choice.get("text") or "")
    return "".join(parts)


def _content_filter_chunk(payload: dict | None) -> str:
    base = payload or {}
    chunk = {"id": base.get("id", ""), "object": base.get("object", "chat.completion.chunk"),
             "created": base.get("created", int(time.time())), "model": base.get("model", ""),
             "choices": [{"index": 0, "delta": {}, "finish_reason": "content_filter"}]}
    return f"data: {json.dumps(chunk)}\n\n"


class StreamRelay:
    def __init__(self, call: Call, moderator: Moderator | None, keep_usage: bool,
                 renames: dict[str, str] | None = None):
        self.call = call
        self.renames = {'"reasoning":': '"reasoning_content":', **(renames or {})}
        self.check = StreamCheck(moderator) if moderator is not None else None
        self.keep_usage = keep_usage
        self.chunks = 0

    async def run(self, first: list, rest) -> AsyncIterator[str]:
        batch = first
        while True:
            out = []
            self.call.chunk_seen()
            for chunk in batch:
                if isinstance(chunk, ErrorResponse):
                    out.append(f"data: {json.dumps(OpenAIError(chunk.error.code, chunk.error.message).body())}\n\n")
                    continue
                if '"choices":[]' in chunk and '"usage":{' in chunk:
                    payload = _payload(chunk)
                    if payload is not None:
                        self.call.usage(payload.get("usage"))
                    if not self.keep_usage:
                        continue
                elif self.check is not None:
                    payload = _payload(chunk)
                    text = _delta_text(payload) if payload is not None else ""
                    self.chunks += bool(text)
                    if text and self.check.add(text):
                        # Flagged: what was not sent yet stays unsent; the stream ends as filtered. The engine
                        # sends no usage now, so the completion is counted as the chunks generated.
                        self.call.completion_tokens = self.call.completion_tokens or self.chunks
                        yield "".join(out) + _content_filter_chunk(payload) + "data: [DONE]\n\n"
                        rest.cancel()
                        return
                for old, new in self.renames.items():
                    chunk = chunk.replace(old, new)
                out.append(chunk)
            if out:
                yield "".join(out)
            try:
                batch = await rest.__anext__()
            except StopAsyncIteration:
                return
