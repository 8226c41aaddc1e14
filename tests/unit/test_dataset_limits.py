"""A hostile dataset cannot grow its reader (issue 26, item 6): readers stream (a line, an element, a row at a
time), stop at 100 errors and at the row cap, refuse an xlsx that declares more than it may unpack, and the
control plane's validation runs in a child whose memory is capped."""

from __future__ import annotations

import time
import tracemalloc
import zipfile

import pytest

from train_jobs.datasets import DatasetLimits, RowError, check_dataset, read_dataset, report, validate_dataset
from train_jobs.datasets.isolated import check_isolated

pytestmark = pytest.mark.unit
MiB = 2**20
EMPTY_OBJECT_ERRORS = [RowError(line=n, field=f, reason="Field required")
                       for n in range(1, 51) for f in ("instruction", "output")]


def write_repeated(path, line: bytes, total: int, head: bytes = b"", tail: bytes = b""):
    """`head`, then `line` repeated to about `total` bytes, then `tail`, written in 8 MiB chunks."""
    chunk = line * (min(total, 8 * MiB) // len(line))
    with path.open("wb") as out:
        out.write(head)
        for _ in range(total // len(chunk)):
            out.write(chunk)
        out.write(tail)
    return path


def traced(call):
    """call()'s result and the most memory Python allocated meanwhile."""
    tracemalloc.start()
    try:
        result = call()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_200_mib_of_empty_objects_gives_the_first_100_errors_in_bounded_memory(tmp_path):
    path = write_repeated(tmp_path / "hostile.jsonl", b"{}\n", 200 * MiB)
    started = time.perf_counter()
    check, peak = traced(lambda: check_dataset(path, "alpaca"))
    assert time.perf_counter() - started < 5
    assert check.errors == EMPTY_OBJECT_ERRORS and check.stopped and check.samples == 0
    assert peak < 5 * MiB  # before: every row and every error of 70 million lines, many GB


def test_a_json_array_is_read_a_chunk_at_a_time(tmp_path):
    long_text = "x" * (3 * MiB)  # an element over the 1 MiB chunk: read on until it is whole
    path = tmp_path / "big.json"
    path.write_text('[\n{"instruction": "q", "output": "a"},' + "\n" * (40 * MiB)
                    + f'{{"instruction": "{long_text}", "output": "a"}}, {{"instruction": 3}}\n]')
    check, peak = traced(lambda: check_dataset(path, "alpaca"))
    last = 2 + 40 * MiB
    assert check.errors == [RowError(line=last, field="instruction", reason="Input should be a valid string"),
                            RowError(line=last, field="output", reason="Field required")]
    assert check.samples == 2
    assert peak < 16 * MiB  # before: the whole text (43 MiB) at once


def test_a_json_array_on_one_line_keeps_its_columns(tmp_path):
    path = tmp_path / "one-line.json"
    path.write_text("[" + '{"text": "a"}, ' * 100_000 + '{"text": }]')  # 1.5 MB: over one chunk of 1 MiB
    error = RowError(line=1, field="line", reason=f"Invalid JSON: Expecting value at column {1 + 15 * 100_000 + 9 + 1}")
    assert validate_dataset(path, "alpaca", kind="pretrain", limits=DatasetLimits(max_rows=10**6)) == [error]


def test_rows_over_the_cap_are_refused(tmp_path):
    limits = DatasetLimits(max_rows=1000)
    lines = write_repeated(tmp_path / "rows.jsonl", b'{"text": "a"}\n', 1 * MiB)
    assert validate_dataset(lines, "alpaca", "pretrain", limits) == [limits.too_many_rows(1001)]
    array = tmp_path / "rows.json"
    array.write_text("[" + '{"text": "a"},' * 1500 + '{"text": "a"}]')
    assert validate_dataset(array, "alpaca", "pretrain", limits) == [limits.too_many_rows(1)]
    table = tmp_path / "rows.csv"
    table.write_text("conversation_id,human,assistant\n" + "1,q,a\n" * 1500)
    assert validate_dataset(table, "csv", limits=limits) == [limits.too_many_rows(1001)]
    with pytest.raises(Exception, match="more than 1000 rows"):
        read_dataset(lines, "alpaca", "pretrain", limits)  # the training job's own read respects the cap too


def test_a_line_over_the_row_size_is_one_error_and_reading_goes_on(tmp_path):
    limits = DatasetLimits(max_row_bytes=1000)
    path = tmp_path / "long.jsonl"
    path.write_text('{"text": "' + "x" * 5000 + '"}\n{"text": "fine"}\n{"text": ""}\n')
    assert validate_dataset(path, "alpaca", "pretrain", limits) == [
        limits.row_too_long(1), RowError(line=3, field="text", reason="must not be empty")]
    table = tmp_path / "long.csv"
    table.write_text("conversation_id,human,assistant\n1," + "x" * 5000 + ",a\n")
    assert validate_dataset(table, "csv", limits=limits) == [limits.row_too_long(2)]


def test_an_xlsx_that_declares_more_than_it_may_unpack_is_refused_unread(tmp_path):
    path = tmp_path / "bomb.xlsx"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("xl/sharedStrings.xml", b"\0" * (8 * MiB))  # 8 MiB unpacked from a few KiB
    limits = DatasetLimits(max_unpacked_bytes=4 * MiB)
    assert validate_dataset(path, "xlsx", limits=limits) == [RowError(
        line=0, field="file", reason=f"the workbook unpacks to {8 * MiB} bytes, over the limit of {4 * MiB}; "
                                     "save it as csv")]


def test_the_isolated_check_answers_as_the_in_process_one(tmp_path):
    path = write_repeated(tmp_path / "hostile.jsonl", b"{}\n", 8 * MiB)
    check = check_isolated(path, "alpaca", "sft", DatasetLimits(), 1024 * MiB, 60)
    assert check.errors == EMPTY_OBJECT_ERRORS and check.stopped
    good = tmp_path / "good.jsonl"
    good.write_text('{"instruction": "q", "output": "a"}\n' * 3)
    assert check_isolated(good, "alpaca", "sft", DatasetLimits(), 1024 * MiB, 60).samples == 3


def test_a_file_that_needs_more_memory_than_the_child_has_is_refused(tmp_path):
    path = tmp_path / "one-huge-row.jsonl"
    path.write_bytes(b'{"text": "' + b"x" * (160 * MiB) + b'"}\n')
    limits = DatasetLimits(max_row_bytes=1024 * MiB)  # no row cap stops it first: the memory cap must
    check = check_isolated(path, "alpaca", "pretrain", limits, 256 * MiB, 60)
    assert check.errors == [RowError(line=0, field="file", reason="validating the file needs more than 256 MiB "
                                                                  "of memory; split it into smaller files")]


def test_a_file_that_takes_too_long_is_refused(tmp_path):
    path = write_repeated(tmp_path / "slow.jsonl", b'{"text": "a"}\n', 64 * MiB)
    check = check_isolated(path, "alpaca", "pretrain", DatasetLimits(max_rows=10**8), 1024 * MiB, 0.5)
    assert check.errors == [RowError(line=0, field="file", reason="validating the file took longer than 0.5 s; "
                                                                  "split it into smaller files")]


def test_a_report_fits_the_job_status_column_with_the_errors_that_fit():
    errors = [RowError(line=n, field="output", reason="r" * 300) for n in range(1, 101)]
    text = report(errors, stopped=True, max_chars=4000)
    lines = text.splitlines()
    assert len(text) <= 4000 and lines[0] == "dataset is invalid (validation stopped at the first 100 errors):"
    shown = len(lines) - 2
    assert lines[1:-1] == [f"  line {n}, output: {'r' * 300}" for n in range(1, shown + 1)]
    assert lines[-1] == f"  ... {100 - shown} more" and shown == 12
    assert report(errors[:2]) == "dataset is invalid (2 errors):\n" + "\n".join(
        f"  line {n}, output: {'r' * 300}" for n in (1, 2))
