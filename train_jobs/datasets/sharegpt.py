"""ShareGPT: `conversations` of {"from", "value"} messages, roles alternating between the user and the model."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from .jsonl import FieldProblem, JsonFormat
from .schema import NonBlankStr, Sample

# The manual: human and observation at odd positions (1st, 3rd...), gpt and function at even ones.
_ODD_ROLES = {"human": "user", "observation": "tool"}
_EVEN_ROLES = {"gpt": "assistant", "function_call": "assistant", "function": "assistant"}


class ShareGptMessage(BaseModel):
    model_config = ConfigDict(strict=True)

    role: str = Field(alias="from")
    value: NonBlankStr


class ShareGptRow(BaseModel):
    model_config = ConfigDict(strict=True)

    conversations: list[ShareGptMessage] = Field(min_length=1)
    system: str | None = None
    tools: str | None = None  # tool descriptions, kept for chat templates that render tools


def sharegpt_problems(row: ShareGptRow) -> list[FieldProblem]:
    problems: list[FieldProblem] = []
    for index, message in enumerate(row.conversations):
        position = index + 1
        allowed = _ODD_ROLES if position % 2 else _EVEN_ROLES
        if message.role not in allowed:
            *others, last = allowed
            expected = f"{', '.join(others)} or {last}"
            problems.append((f"conversations[{index}].from",
                             f"position {position} must be {expected}, found {message.role!r}"))
    if len(row.conversations) % 2:
        problems.append(("conversations", "must end with gpt or function_call at an even position, "
                                          f"found {len(row.conversations)} messages"))
    return problems


def sharegpt_sample(row: ShareGptRow) -> Sample:
    messages = [{"role": "system", "content": row.system}] if row.system else []
    roles = _ODD_ROLES | _EVEN_ROLES
    messages += [{"role": roles[m.role], "content": m.value} for m in row.conversations]
    return Sample(messages=messages, tools=row.tools or None)


SHAREGPT = JsonFormat(row=ShareGptRow, to_sample=sharegpt_sample, problems=sharegpt_problems)
