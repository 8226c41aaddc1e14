"""csv and xlsx datasets: columns conversation_id, human, assistant; rows sharing an id form one conversation.
Rows are read one at a time (csv: bounded lines; xlsx: only a workbook whose parts declare at most
`max_unpacked_bytes` is opened, and Python's zipfile never unpacks more than a part declares)."""

from __future__ import annotations

import csv
import zipfile
from collections.abc import Iterable, Iterator
from datetime import date, datetime, time
from pathlib import Path
from typing import BinaryIO

import openpyxl
from openpyxl.utils.exceptions import InvalidFileException
from pydantic import BaseModel, PositiveInt, ValidationError

from .schema import DatasetLimits, NonBlankStr, RowError, Sample, excerpt, row_errors

COLUMNS = ("conversation_id", "human", "assistant")
COUNTED = Sample()  # what validation yields per conversation: it counts them and keeps none of their text


class TableRow(BaseModel):
    conversation_id: PositiveInt  # parsed from the cell's text
    human: NonBlankStr
    assistant: NonBlankStr


class _LineTooLong(Exception):
    pass


def read_csv_dataset(path: Path, limits: DatasetLimits = DatasetLimits(), keep: bool = True
                     ) -> Iterator[Sample | RowError]:
    """The conversations (`keep`; else one COUNTED each) after the rows' errors, in file order."""
    return _conversations(_csv_rows(path, limits), limits, keep)


def read_xlsx_dataset(path: Path, limits: DatasetLimits = DatasetLimits(), keep: bool = True
                      ) -> Iterator[Sample | RowError]:
    return _conversations(_xlsx_rows(path, limits), limits, keep)


def _csv_rows(path: Path, limits: DatasetLimits) -> Iterator[tuple[int, list[str]] | RowError]:
    with path.open("rb") as file:
        reader = csv.reader(_utf8_lines(file, limits.max_row_bytes))
        number = 0
        try:
            for number, cells in enumerate(reader, start=1):
                yield number, cells
        except UnicodeDecodeError as error:
            # Usually the whole file is in a legacy code page: one error says more than one per row.
            yield RowError(line=number + 1, field="file",
                           reason=f"not UTF-8 text ({error.reason}); save the file as CSV UTF-8")
        except csv.Error as error:
            yield RowError(line=number + 1, field="line", reason=f"not valid CSV: {error}")
        except _LineTooLong:
            yield limits.row_too_long(number + 1)


def _utf8_lines(file: BinaryIO, max_bytes: int) -> Iterator[str]:
    """Decoded line by line, so that a decoding error names the row it is in."""
    index = 0
    while raw := file.readline(max_bytes + 1):
        if len(raw) > max_bytes and not raw.endswith(b"\n"):
            raise _LineTooLong
        yield raw.decode("utf-8-sig" if index == 0 else "utf-8")  # Excel's "CSV UTF-8" starts with a BOM
        index += 1


def _unpacked_size(path: Path) -> int:
    """What the parts of a zip declare they unpack to (zipfile never unpacks more than a part declares)."""
    with zipfile.ZipFile(path) as archive:
        return sum(info.file_size for info in archive.infolist())


def _xlsx_rows(path: Path, limits: DatasetLimits) -> Iterator[tuple[int, list[str]] | RowError]:
    try:
        unpacked = _unpacked_size(path)
        if unpacked > limits.max_unpacked_bytes:
            yield RowError(line=0, field="file", reason=f"the workbook unpacks to {unpacked} bytes, over the limit "
                                                        f"of {limits.max_unpacked_bytes}; save it as csv")
            return
        workbook = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except (InvalidFileException, zipfile.BadZipFile, KeyError, OSError) as error:
        yield RowError(line=0, field="file", reason=f"not a readable xlsx workbook: {error}")
        return
    try:
        sheet = workbook.worksheets[0]
        for number, cells in enumerate(sheet.iter_rows(min_row=1, values_only=True), start=1):
            yield number, [_cell_text(value) for value in cells]
    finally:
        workbook.close()


def _cell_text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # Excel stores every number as a float: an id of 1 reads 1.0
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    return str(value)


def _conversations(rows: Iterable[tuple[int, list[str]] | RowError], limits: DatasetLimits, keep: bool
                   ) -> Iterator[Sample | RowError]:
    """Rows with the same conversation_id join the conversation that id started, in file order; the
    conversations come after the rows' errors (an id may come back on the last row)."""
    rows = iter(rows)
    first = next(rows, None)
    if first is None or isinstance(first, RowError):
        yield from [first] if first else []
        return
    _, header = first
    names = [name.strip().lower() for name in header]
    missing = [column for column in COLUMNS if column not in names]
    if missing:
        found = excerpt(", ".join(name for name in names if name)) or "nothing"
        yield RowError(line=1, field="header", reason=f"missing column(s) {', '.join(missing)}; found {found}")
        return
    positions = {column: names.index(column) for column in COLUMNS}
    conversations: dict[int, list[dict] | None] = {}
    for row in rows:
        if isinstance(row, RowError):
            yield row
            continue
        number, cells = row
        if number > limits.max_rows:
            yield limits.too_many_rows(number)
            return
        if not any(cell.strip() for cell in cells):
            continue  # spreadsheets keep formatted but empty rows
        values = {column: cells[i] if i < len(cells) else "" for column, i in positions.items()}
        try:
            turn = TableRow.model_validate(values)
        except ValidationError as error:
            yield from row_errors(error, number)
            continue
        if keep:
            conversations.setdefault(turn.conversation_id, []).extend(
                [{"role": "user", "content": turn.human}, {"role": "assistant", "content": turn.assistant}])
        else:
            conversations.setdefault(turn.conversation_id, None)
    yield from (Sample(messages=messages) if keep else COUNTED for messages in conversations.values())
