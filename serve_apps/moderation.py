"""Content moderation: a pluggable checker on the input and the output of text-generation calls.

The built-in checker flags text that contains any term of a configurable list (case-insensitive):
`MAAS_MODERATION_TERMS` (comma-separated) and/or `MAAS_MODERATION_TERMS_FILE` (one term per line).
Another checker plugs in with `MAAS_MODERATOR=package.module:ClassName` (a no-argument class with
`flagged(text) -> bool`).
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any, Protocol


class Moderator(Protocol):
    def flagged(self, text: str) -> bool: ...


class TermListModerator:
    def __init__(self, terms: list[str]):
        self.terms = sorted({t.strip().lower() for t in terms if t.strip()})
        self.longest = max((len(t) for t in self.terms), default=0)

    def flagged(self, text: str) -> bool:
        lowered = text.lower()
        return any(term in lowered for term in self.terms)

    @classmethod
    def from_env(cls) -> "TermListModerator":
        terms = os.environ.get("MAAS_MODERATION_TERMS", "").split(",")
        path = os.environ.get("MAAS_MODERATION_TERMS_FILE")
        if path:
            terms += Path(path).read_text(encoding="utf-8").splitlines()
        return cls(terms)


def load_moderator() -> Moderator:
    spec = os.environ.get("MAAS_MODERATOR")
    if not spec:
        return TermListModerator.from_env()
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)()


def request_text(body: Any) -> str:
    """The text a chat or completion request sends to the model."""
    if getattr(body, "messages", None) is not None:
        parts = []
        for message in body.messages:
            content = message.get("content") if isinstance(message, dict) else getattr(message, "content", None)
            if isinstance(content, str):
                parts.append(content)
            elif isinstance(content, list):
                parts += [p.get("text", "") for p in content if isinstance(p, dict)]
        return "\n".join(parts)
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
