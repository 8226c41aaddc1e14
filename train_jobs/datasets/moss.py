"""MOSS: one conversation per line, `chat` holding `turn_1`, `turn_2`, ... each with `Human` and `MOSS`."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field

from .jsonl import FieldProblem, JsonFormat
from .schema import NonBlankStr, Sample

_TURN_KEY = re.compile(r"turn_([1-9][0-9]*)")


class MossTurn(BaseModel):
    model_config = ConfigDict(strict=True)  # other keys of MOSS-003 (Inner Thoughts, Commands...) are not trained

    Human: NonBlankStr
    MOSS: NonBlankStr


class MossRow(BaseModel):
    model_config = ConfigDict(strict=True)

    conversation_id: int
    meta_instruction: str | None = None  # MOSS-003's system prompt
    num_turns: int | None = None
    chat: dict[str, MossTurn] = Field(min_length=1)


def moss_problems(row: MossRow) -> list[FieldProblem]:
    problems: list[FieldProblem] = []
    numbers = []
    for key in row.chat:
        match = _TURN_KEY.fullmatch(key)
        if match:
            numbers.append(int(match[1]))
        else:
            problems.append((f"chat.{key}", "turn keys are named turn_1, turn_2, ..."))
    missing = sorted(set(range(1, len(row.chat) + 1)) - set(numbers))
    if missing and not problems:
        problems.append(("chat", f"turns are numbered from turn_1 without gaps; missing turn_{missing[0]}"))
    if row.num_turns is not None and row.num_turns != len(row.chat):
        problems.append(("num_turns", f"is {row.num_turns} but chat has {len(row.chat)} turns"))
    return problems


def moss_sample(row: MossRow) -> Sample:
    messages = [{"role": "system", "content": row.meta_instruction}] if row.meta_instruction else []
    for key in sorted(row.chat, key=lambda key: int(key.removeprefix("turn_"))):
        turn = row.chat[key]
        messages += [{"role": "user", "content": turn.Human}, {"role": "assistant", "content": turn.MOSS}]
    return Sample(messages=messages)


MOSS = JsonFormat(row=MossRow, to_sample=moss_sample, problems=moss_problems)
