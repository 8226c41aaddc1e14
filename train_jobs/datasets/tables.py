"""csv and xlsx datasets: columns conversation_id, human, assistant; rows sharing an id form one conversation."""

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

from .schema import NonBlankStr, RowError, Sample, excerpt, row_errors

COLUMNS = ("conversation_id", "human", "assistant")


class TableRow(BaseModel):
    conversation_id: PositiveInt  # parsed from the cell's text
    human: NonBlankStr
    assistant: NonBlankStr


def read_csv_dataset(path: Path) -> tuple[list[Sample], list[RowError]]:
    return _conversations(_csv_rows(path))


def read_xlsx_dataset(path: Path) -> tuple[list[Sample], list[RowError]]:
    return _conversations(_xlsx_rows(path))


def _csv_rows(path: Path) -> Iterator[tuple[int, list[str]] | RowError]:
    with path.open("rb") as file:
        reader = csv.reader(_utf8_lines(file))
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


def _utf8_lines(file: BinaryIO) -> Iterator[str]:
    """Decoded line by line, so that a decoding error names the row it is in."""
    for index, raw in enumerate(file):
        yield raw.decode("utf-8-sig" if index == 0 else "utf-8")  # Excel's "CSV UTF-8" starts with a BOM


def _xlsx_rows(path: Path) -> Iterator[tuple[int, list[str]] | RowError]:
    try:
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


def _conversations(rows: Iterable[tuple[int, list[str]] | RowError]) -> tuple[list[Sample], list[RowError]]:
    """Rows with the same conversation_id join the conversation that id started, in file order."""
    rows = iter(rows)
    first = next(rows, None)
    if first is None or isinstance(first, RowError):
        return [], [first] if first else []
    _, header = first
    names = [name.strip().lower() for name in header]
    missing = [column for column in COLUMNS if column not in names]
    if missing:
        found = excerpt(", ".join(name for name in names if name)) or "nothing"
        return [], [RowError(line=1, field="header", reason=f"missing column(s) {', '.join(missing)}; found {found}")]
    positions = {column: names.index(column) for column in COLUMNS}
    conversations: dict[int, list[dict]] = {}
    errors: list[RowError] = []
    for row in rows:
        if isinstance(row, RowError):
            errors.append(row)
            continue
        number, cells = row
        if not any(cell.strip() for cell in cells):
            continue  # spreadsheets keep formatted but empty rows
        values = {column: cells[i] if i < len(cells) else "" for column, i in positions.items()}
        try:
            turn = TableRow.model_validate(values)
        except ValidationError as error:
            errors += row_errors(error, number)
            continue
        conversations.setdefault(turn.conversation_id, []).extend(
            [{"role": "user", "content": turn.human}, {"role": "assistant", "content": turn.assistant}])
    return [Sample(messages=messages) for messages in conversations.values()], errors
