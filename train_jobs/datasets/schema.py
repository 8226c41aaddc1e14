"""What a dataset reader returns (samples) and what it reports (row errors)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ValidationError
from pydantic_core import PydanticCustomError


MAX_EXCERPT = 80  # characters of the file a report may quote
MAX_REASON = 300


@dataclass(frozen=True)
class DatasetLimits:
    """How much of a file a reader takes in: whatever the file holds, its reader's memory stays bounded."""

    max_rows: int = 1_000_000  # lines of JSON Lines (blank ones too), elements of a JSON array, rows of a table
    max_errors: int = 100  # a reader stops at this many errors: a broken file's report is its first ones
    max_row_bytes: int = 16 * 2**20  # one line of JSON Lines or csv, one element of a JSON array
    max_unpacked_bytes: int = 2**30  # what an xlsx (a zip) declares its parts unpack to, all together

    def too_many_rows(self, line: int) -> "RowError":
        return RowError(line=line, field="file", reason=f"the file has more than {self.max_rows} rows (lines); "
                                                        "split it or ask the admin (MAAS_DATASET_MAX_ROWS)")

    def row_too_long(self, line: int) -> "RowError":
        return RowError(line=line, field="line", reason=f"longer than {self.max_row_bytes} bytes")


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
    """The dataset has at least one error; `errors` lists them in file order (the first `max_errors` when
    `stopped`: the reader stopped there)."""

    def __init__(self, errors: list[RowError], stopped: bool = False):
        self.errors, self.stopped = errors, stopped
        super().__init__(_headline(errors, stopped))

    def __str__(self) -> str:
        return report(self.errors, self.stopped)


class Sample(BaseModel):
    """One training sample: a conversation for fine-tuning, or a document for continued pre-training."""

    messages: list[dict] | None = None  # OpenAI-style [{"role": ..., "content": ...}, ...]
    text: str | None = None
    tools: str | None = None  # ShareGPT's tool description, for chat templates that render tools


def report(errors: list[RowError], stopped: bool = False, max_chars: int | None = None) -> str:
    """One line per error under a headline; within `max_chars` (a database column), the errors that fit."""
    text = f"{_headline(errors, stopped)}:"
    for shown, error in enumerate(errors):
        line = f"\n  line {error.line}, {error.field}: {error.reason}"
        more = f"\n  ... {len(errors) - shown} more"
        if max_chars is not None and len(text) + len(line) + (len(more) if shown < len(errors) - 1 else 0) > max_chars:
            return text + more
        text += line
    return text


def _headline(errors: list[RowError], stopped: bool) -> str:
    if stopped:
        return f"dataset is invalid (validation stopped at the first {len(errors)} errors)"
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
