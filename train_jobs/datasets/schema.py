"""What a dataset reader returns (samples) and what it reports (row errors)."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ValidationError
from pydantic_core import PydanticCustomError


MAX_EXCERPT = 80  # characters of the file a report may quote
MAX_REASON = 300


def excerpt(text: str, limit: int = MAX_EXCERPT) -> str:
    """At most `limit` characters of a file's text, for an error report (never the file itself)."""
    text = text.replace("\x00", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


class RowError(BaseModel):
    """One problem in a dataset file, located so that the user can fix it in an editor."""

    line: int  # 1-based line of the file (csv/xlsx: row number, header = 1); 0 = the file as a whole
    field: Annotated[str, AfterValidator(lambda v: excerpt(v, MAX_EXCERPT))]  # dotted path inside the row, "line"
    reason: Annotated[str, AfterValidator(lambda v: excerpt(v, MAX_REASON))]


class DatasetInvalid(Exception):
    """The dataset has at least one error; `errors` lists every one of them, in file order."""

    def __init__(self, errors: list[RowError]):
        self.errors = errors
        super().__init__(_headline(errors))

    def __str__(self) -> str:
        return report(self.errors)  # built on demand: a broken 100k-row file has 100k lines of report


class Sample(BaseModel):
    """One training sample: a conversation for fine-tuning, or a document for continued pre-training."""

    messages: list[dict] | None = None  # OpenAI-style [{"role": ..., "content": ...}, ...]
    text: str | None = None
    tools: str | None = None  # ShareGPT's tool description, for chat templates that render tools


def report(errors: list[RowError]) -> str:
    return "\n".join([f"{_headline(errors)}:", *(f"  line {e.line}, {e.field}: {e.reason}" for e in errors)])


def _headline(errors: list[RowError]) -> str:
    return f"dataset is invalid ({len(errors)} error{'' if len(errors) == 1 else 's'})"


def _reject_blank(value: str) -> str:
    if not value or value.isspace():
        raise PydanticCustomError("blank", "must not be empty")
    return value


# Content that is trained on: whitespace alone would be an empty turn.
NonBlankStr = Annotated[str, AfterValidator(_reject_blank)]


def field_path(loc: tuple[int | str, ...]) -> str:
    """("chat", "turn_1", "Human") -> "chat.turn_1.Human"; ("history", 0, 1) -> "history[0][1]"."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else part
    return path or "line"


def row_errors(error: ValidationError, line: int) -> list[RowError]:
    return [RowError(line=line, field=field_path(e["loc"]), reason=e["msg"])
            for e in error.errors(include_url=False)]
