"""Rows of a JSON dataset file: JSON Lines, or one top-level JSON array as in the manual's examples."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from .schema import RowError, Sample, row_errors

_JSON_SPACE = re.compile(r"[ \t\r\n]*")
FieldProblem = tuple[str, str]  # (field path, reason) found by a rule that spans several fields


@dataclass(frozen=True)
class JsonFormat:
    """How one JSON dataset format turns a row into a sample."""

    row: type[BaseModel]  # strict schema of one row
    to_sample: Callable[[Any], Sample]
    problems: Callable[[Any], list[FieldProblem]] = field(default=lambda row: [])  # none beyond the schema


def read_json_dataset(path: Path, fmt: JsonFormat) -> tuple[list[Sample], list[RowError]]:
    samples: list[Sample] = []
    errors: list[RowError] = []
    for line, raw in _records(path):
        if isinstance(raw, RowError):
            errors.append(raw)
            continue
        try:
            row = fmt.row.model_validate_json(raw)
        except ValidationError as error:
            errors += [_within_line(e) for e in row_errors(error, line)]
            continue
        problems = fmt.problems(row)
        if problems:
            errors += [RowError(line=line, field=f, reason=r) for f, r in problems]
        else:
            samples.append(fmt.to_sample(row))
    return samples, errors


def _within_line(error: RowError) -> RowError:
    # A JSON Lines record is one line, so pydantic's "line 1" would only mislead.
    return error.model_copy(update={"reason": error.reason.replace(" at line 1 column ", " at column ")})


def _records(path: Path) -> Iterator[tuple[int, bytes | str | RowError]]:
    with path.open("rb") as file:
        head = file.read(4096).removeprefix(b"\xef\xbb\xbf").lstrip()
    if head.startswith(b"["):
        yield from _array_elements(path)
    else:
        yield from _lines(path)


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with path.open("rb") as file:
        for line, raw in enumerate(file, start=1):
            if line == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")  # editors on Windows save a BOM
            if raw.strip():
                yield line, raw


def _array_elements(path: Path) -> Iterator[tuple[int, str | RowError]]:
    """Each element's source text with the line it starts on; a syntax error ends the file."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        yield 0, RowError(line=0, field="file", reason=f"not UTF-8 text: {error.reason}")
        return
    lines = _LineCounter(text)
    decoder = json.JSONDecoder()
    position = _skip_space(text, text.index("[") + 1)
    closed = text.startswith("]", position)
    if closed:
        position = _skip_space(text, position + 1)
    while not closed:
        try:
            _, end = decoder.raw_decode(text, position)
        except json.JSONDecodeError as error:
            yield error.lineno, RowError(line=error.lineno, field="line",
                                         reason=f"Invalid JSON: {error.msg} at column {error.colno}")
            return
        yield lines.at(position), text[position:end]
        position = _skip_space(text, end)
        closed = text.startswith("]", position)
        if not closed and not text.startswith(",", position):
            line = lines.at(position)
            yield line, RowError(line=line, field="line", reason="Invalid JSON: expected ',' or ']' after an element")
            return
        position = _skip_space(text, position + 1)
    if position < len(text):
        line = lines.at(position)
        yield line, RowError(line=line, field="line", reason="unexpected content after the JSON array")


class _LineCounter:
    """Line numbers of increasing offsets, counting each newline once (files of 100k rows)."""

    def __init__(self, text: str):
        self.text, self.line, self.counted_to = text, 1, 0

    def at(self, offset: int) -> int:
        self.line += self.text.count("\n", self.counted_to, offset)
        self.counted_to = offset
        return self.line


def _skip_space(text: str, position: int) -> int:
    return _JSON_SPACE.match(text, position).end()
