"""Content moderation: a pluggable checker on the input and the output of text-generation calls.

The built-in checker flags text that contains any term of a configurable list (case-insensitive):
`MAAS_MODERATION_TERMS` (comma-separated) and/or `MAAS_MODERATION_TERMS_FILE` (default
`$MAAS_HOME/moderation_terms.txt`; one term per line; re-read
within a second of being changed, so operators update it without a restart).
Another checker plugs in with `MAAS_MODERATOR=package.module:ClassName` (a no-argument class with
`flagged(text) -> bool`).
"""

from __future__ import annotations

import importlib
import json
import time
from pathlib import Path
from typing import Any, Protocol

from serve_apps.settings import plane_settings


class Moderator(Protocol):
    def flagged(self, text: str) -> bool: ...


class TermListModerator:
    def __init__(self, terms: list[str], path: str | None = None):
        self._fixed = [t for t in terms if t.strip()]
        self._path = Path(path) if path else None
        self._mtime: float | None = None
        self._checked = 0.0
        self._set(self._fixed)
        self._refresh()

    def _set(self, terms: list[str]) -> None:
        self.terms = sorted({t.strip().lower() for t in terms if t.strip()})
        self.longest = max((len(t) for t in self.terms), default=0)

    def _refresh(self) -> None:
        if self._path is None or time.monotonic() - self._checked < 1.0:
            return
        self._checked = time.monotonic()
        try:
            mtime = self._path.stat().st_mtime
        except OSError:
            mtime = None
        if mtime != self._mtime:
            self._mtime = mtime
            lines = self._path.read_text(encoding="utf-8").splitlines() if mtime is not None else []
            self._set(self._fixed + lines)

    @property
    def active(self) -> bool:
        """Whether any term is set: with none, nothing can be flagged (input it cannot read is no risk)."""
        self._refresh()
        return bool(self.terms)

    def flagged(self, text: str) -> bool:
        self._refresh()
        lowered = text.lower()
        return any(term in lowered for term in self.terms)

    @classmethod
    def from_env(cls) -> "TermListModerator":
        settings = plane_settings()
        path = settings.moderation_terms_file or settings.home / "moderation_terms.txt"
        return cls(settings.moderation_terms.split(","), str(path))


def load_moderator() -> Moderator:
    spec = plane_settings().moderator
    if not spec:
        return TermListModerator.from_env()
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)()


def _get(item: Any, name: str) -> Any:
    return item.get(name) if isinstance(item, dict) else getattr(item, name, None)


def message_text(message: Any) -> str:
    """Every text of one chat message (or stream delta) the model reads or writes: its content (text parts),
    its reasoning, and the names and arguments of its tool calls."""
    parts = []
    content = _get(message, "content")
    if isinstance(content, str):
        parts.append(content)
    elif isinstance(content, list):
        parts += [p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
    for name in ("reasoning_content", "reasoning"):
        if isinstance(_get(message, name), str):
            parts.append(_get(message, name))
    for call in _get(message, "tool_calls") or []:
        function = _get(call, "function") or {}
        parts += [v for v in (_get(function, "name"), _get(function, "arguments")) if isinstance(v, str)]
    return "\n".join(p for p in parts if p)


_NOT_TEXT = {"type", "role", "id", "call_id", "tool_use_id", "status", "signature", "model"}
_SCHEMAS = {"parameters", "input_schema", "schema"}
_API_FIELDS = {"input", "instructions", "system", "messages", "tools"}


def _strings(value: Any, parts: list[str]) -> None:
    if isinstance(value, str):
        parts.append(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            if key in _SCHEMAS and isinstance(item, dict):
                parts.append(json.dumps(item, ensure_ascii=False))
            elif key not in _NOT_TEXT:
                _strings(item, parts)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _strings(item, parts)


def output_text(value: Any) -> str:
    """Every text in a Responses or Anthropic Messages structure (an answer's `output`/`content`, or a
    request's input): texts, reasoning, tool names, arguments and schemas; not ids, roles or types."""
    parts: list[str] = []
    _strings(value, parts)
    return "\n".join(p for p in parts if p)


def request_text(body: Any) -> str:
    """The text a chat or completion request sends to the model: every message, and the tools' names,
    descriptions and parameter schemas (Responses and Anthropic Messages bodies: the same, by their fields)."""
    if hasattr(body, "max_output_tokens") or hasattr(body, "stop_sequences"):
        return output_text(body.model_dump(mode="json", include=_API_FIELDS, exclude_none=True))
    if getattr(body, "messages", None) is not None:
        parts = [message_text(message) for message in body.messages]
        for tool in getattr(body, "tools", None) or []:
            function = _get(tool, "function") or {}
            parts += [v for v in (_get(function, "name"), _get(function, "description")) if isinstance(v, str)]
            if _get(function, "parameters") is not None:
                parts.append(json.dumps(_get(function, "parameters"), ensure_ascii=False))
        return "\n".join(p for p in parts if p)
    prompt = getattr(body, "prompt", "")
    if isinstance(prompt, list):
        return "\n".join(p for p in prompt if isinstance(p, str))
    return prompt if isinstance(prompt, str) else ""


class StreamCheck:
    """Checks streamed text as it grows; keeps only the tail a split term could still complete."""

    def __init__(self, moderator: Moderator):
        self.moderator = moderator
        self._tail = ""
        self._keep = getattr(moderator, "longest", 256)

    def add(self, text: str) -> bool:
        window = self._tail + text
        flagged = self.moderator.flagged(window)
        self._tail = window[-self._keep:] if self._keep else ""
        return flagged
