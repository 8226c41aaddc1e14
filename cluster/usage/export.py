"""The XLSX export of call statistics: one sheet per chart of the console (spec §9.2)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import BinaryIO, Callable

from sqlalchemy.orm import Session

from cluster.usage.schemas import (SeriesBucket, Stats, UsageQuery, bad)
from cluster.usage.stats import series

STAT_COLUMNS = ["AVG", "MAX", "P50", "P80", "P90", "P99"]


def _stat_row(s: Stats) -> list:
    return [s.avg, s.max, s.p50, s.p80, s.p90, s.p99]


# metric id -> (sheet name, series columns, one bucket's values); the errors chart's columns are its codes.
CHARTS: dict[str, tuple[str, list[str], Callable[[SeriesBucket], list]]] = {
    "calls": ("Calls", ["total", "success", "failed"], lambda b: [b.calls, b.success, b.failed]),
    "tokens": ("Tokens", ["total", "input", "output"], lambda b: [b.total_tokens, b.prompt_tokens,
                                                                   b.completion_tokens]),
    "ttft": ("TTFT (ms)", STAT_COLUMNS, lambda b: _stat_row(b.ttft_ms)),
    "prompt_size": ("Input token size", STAT_COLUMNS, lambda b: _stat_row(b.prompt_size)),
    "rpm": ("RPM", ["RPM"], lambda b: [b.rpm]),
    "failure_rate": ("Failure rate (%)", ["failure rate (%)"], lambda b: [b.failure_rate]),
    "errors": ("Errors", [], lambda b: []),
    "latency": ("Average latency (ms)", ["average latency (ms)"], lambda b: [b.avg_latency_ms]),
    "tpot": ("TPOT (ms)", STAT_COLUMNS, lambda b: _stat_row(b.tpot_ms)),
    "completion_size": ("Output token size", STAT_COLUMNS, lambda b: _stat_row(b.completion_size)),
    "tpm": ("TPM", ["TPM"], lambda b: [b.tpm]),
}


def export_xlsx(session: Session, q: UsageQuery, path: str | Path | BinaryIO, metrics: list[str] | None = None,
                now: datetime | None = None) -> None:
    """One sheet per chart of `metrics` (default all): a `time` column (local to q.tz) and the chart's series."""
    from openpyxl import Workbook

    unknown = sorted(set(metrics or []) - CHARTS.keys())
    if unknown:
        raise bad(f"unknown metrics {unknown}; choose from {list(CHARTS)}")
    data = series(session, q, now)
    codes = sorted({code for b in data.buckets for code in b.errors})
    book = Workbook()
    book.remove(book.active)
    for metric, (title, columns, values) in CHARTS.items():
        if metrics and metric not in metrics:
            continue
        sheet = book.create_sheet(title)
        sheet.append(["time", *(codes if metric == "errors" else columns)])
        for b in data.buckets:
            row = [b.errors.get(c, 0) for c in codes] if metric == "errors" else values(b)
            sheet.append([b.start.replace(tzinfo=None), *row])  # Excel has no time zones
        for cell in sheet["A"][1:]:
            cell.number_format = "yyyy-mm-dd hh:mm"
        sheet.column_dimensions["A"].width = 18
    book.save(path)
