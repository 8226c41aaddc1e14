"""Rows of a JSON dataset file: JSON Lines, or one top-level JSON array as in the manual's examples. Both are
read in pieces (a line, an element): a file's size never becomes its reader's memory."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, TextIO

from pydantic import BaseModel, ValidationError

from .schema import DatasetLimits, RowError, Sample, row_errors

_JSON_SPACE = re.compile(r"[ \t\r\n]*")
_CHUNK = 1 << 20  # characters read at a time from a JSON array
FieldProblem = tuple[str, str]  # (field path, reason) found by a rule that spans several fields


@dataclass(frozen=True)
class JsonFormat:
    """How one JSON dataset format turns a row into a sample."""

    row: type[BaseModel]  # strict schema of one row
    to_sample: Callable[[Any], Sample]
    problems: Callable[[Any], list[FieldProblem]] = field(default=lambda row: [])  # none beyond the schema


def read_json_dataset(path: Path, fmt: JsonFormat, limits: DatasetLimits, keep: bool = True
                      ) -> Iterator[Sample | RowError]:
    """Each row's sample or errors, in file order (`keep` is for tables, whose rows join conversations)."""
    for line, raw in _records(path, limits):
        if isinstance(raw, RowError):
            yield raw
            continue
        try:
            row = fmt.row.model_validate_json(raw)
        except ValidationError as error:
            yield from (_within_line(e) for e in row_errors(error, line))
            continue
        problems = fmt.problems(row)
        if problems:
            yield from (RowError(line=line, field=f, reason=r) for f, r in problems)
        else:
            yield fmt.to_sample(row)


def _within_line(error: RowError) -> RowError:
    # A JSON Lines record is one line, so pydantic's "line 1" would only mislead.
    return error.model_copy(update={"reason": error.reason.replace(" at line 1 column ", " at column ")})


def _records(path: Path, limits: DatasetLimits) -> Iterator[tuple[int, bytes | str | RowError]]:
    with path.open("rb") as file:
        head = file.read(4096).removeprefix(b"\xef\xbb\xbf").lstrip()
    if head.startswith(b"["):
        yield from _array_elements(path, limits)
    else:
        yield from _lines(path, limits)


def _lines(path: Path, limits: DatasetLimits) -> Iterator[tuple[int, bytes | RowError]]:
    with path.open("rb") as file:
        line = 0
        while raw := file.readline(limits.max_row_bytes + 1):
            line += 1
            if line > limits.max_rows:
                yield line, limits.too_many_rows(line)
                return
            if line == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")  # editors on Windows save a BOM
            if len(raw) > limits.max_row_bytes and not raw.endswith(b"\n"):
                _skip_line(file)
                yield line, limits.row_too_long(line)
            elif raw.strip():
                yield line, raw


def _skip_line(file: BinaryIO) -> None:
    while (rest := file.readline(_CHUNK)) and not rest.endswith(b"\n"):
        pass


def _array_elements(path: Path, limits: DatasetLimits) -> Iterator[tuple[int, str | RowError]]:
    """Each element's source text with the line it starts on; a syntax error ends the file."""
    try:
        with path.open(encoding="utf-8-sig") as file:
            yield from _elements(_ArrayText(file), limits)
    except UnicodeDecodeError as error:
        yield 0, RowError(line=0, field="file", reason=f"not UTF-8 text: {error.reason}")


def _elements(text: _ArrayText, limits: DatasetLimits) -> Iterator[tuple[int, str | RowError]]:
    text.skip_space()
    if text.next_char() != "[":  # the head looked like an array once bytes other than JSON's spaces were stripped
        yield text.line, RowError(line=text.line, field="line", reason="Invalid JSON: expected '['")
        return
    text.advance(text.position + 1)
    text.skip_space()
    closed = text.next_char() == "]"
    if closed:
        text.advance(text.position + 1)
    count = 0
    while not closed:
        line = text.line
        element = text.element(limits)
        if isinstance(element, RowError):
            yield element.line, element
            return
        count += 1
        if count > limits.max_rows:
            yield line, limits.too_many_rows(line)
            return
        yield line, element
        text.skip_space()
        after = text.next_char()
        if after not in (",", "]"):
            yield text.line, RowError(line=text.line, field="line",
                                      reason="Invalid JSON: expected ',' or ']' after an element")
            return
        text.advance(text.position + 1)
        closed = after == "]"
        text.skip_space()
    text.skip_space()
    if text.next_char():
        yield text.line, RowError(line=text.line, field="line", reason="unexpected content after the JSON array")


class _ArrayText:
    """A window over a JSON array's text, read a chunk at a time, that knows the line and column it is at."""

    def __init__(self, file: TextIO):
        self.file, self.buffer, self.position, self.ended = file, "", 0, False
        self.base = 0  # offset in the file of buffer[0]
        self.line, self.line_start = 1, 0  # the line at `position`, and the file offset where it starts

    def more(self, size: int = _CHUNK) -> bool:
        """Read on (dropping what was passed); False at the end of the file."""
        chunk = self.file.read(size)
        if not chunk:
            self.ended = True
            return False
        self.base += self.position
        self.buffer, self.position = self.buffer[self.position:] + chunk, 0
        return True

    def advance(self, to: int) -> None:
        newlines = self.buffer.count("\n", self.position, to)
        if newlines:
            self.line += newlines
            self.line_start = self.base + self.buffer.rfind("\n", self.position, to) + 1
        self.position = to

    def skip_space(self) -> None:
        while True:
            self.advance(_JSON_SPACE.match(self.buffer, self.position).end())
            if self.position < len(self.buffer) or not self.more():
                return

    def next_char(self) -> str:
        """The character at the position ("" at the end of the file); call skip_space first."""
        return self.buffer[self.position:self.position + 1]

    def element(self, limits: DatasetLimits) -> str | RowError:
        """The source text of the JSON value at the position, read on until it is complete (or too long)."""
        decoder, size = json.JSONDecoder(), _CHUNK
        while True:
            try:
                _, end = decoder.raw_decode(self.buffer, self.position)
                if end < len(self.buffer) or self.ended:  # a number at the buffer's end may go on
                    value = self.buffer[self.position:end]
                    self.advance(end)
                    return value
            except json.JSONDecodeError as error:
                if self.ended:
                    return self._syntax_error(error)
            if len(self.buffer) - self.position > limits.max_row_bytes:
                return limits.row_too_long(self.line)
            self.more(size)
            size *= 2  # each try parses the element again from its start: grow the reads geometrically

    def _syntax_error(self, error: json.JSONDecodeError) -> RowError:
        line = self.line + self.buffer.count("\n", self.position, error.pos)
        newline = self.buffer.rfind("\n", self.position, error.pos)
        column = error.pos - newline if newline >= 0 else self.base + error.pos - self.line_start + 1
        return RowError(line=line, field="line", reason=f"Invalid JSON: {error.msg} at column {column}")
