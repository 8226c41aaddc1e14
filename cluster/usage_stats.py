"""Call statistics over `usage_records` (spec §9.2): overview, per-service rows, time series, failure details
and the XLSX export. Pure functions of a Session and a UsageQuery; the same on SQLite and PostgreSQL
(plain SQL aggregates only; percentiles and time buckets are computed here, in Python)."""

from __future__ import annotations

import bisect
import http
import math
import re
from datetime import datetime, time, timedelta, timezone
from pathlib import Path
from typing import BinaryIO, Callable, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, Field, model_validator
from sqlalchemy import ColumnElement, and_, case, func, select
from sqlalchemy.orm import Session

from cluster.db import DEFAULT_PROJECT, UsageRecord
from serve_apps.errors import PLATFORM_ERRORS, PlatformError

RangeName = Literal["today", "yesterday", "3d", "7d", "14d", "custom"]
Granularity = Literal["minute", "hour", "day"]
ServiceType = Literal["service", "commercial", "free", "endpoint"]

RANGE_DAYS = {"today": 1, "yesterday": 1, "3d": 3, "7d": 7, "14d": 14}
MAX_CUSTOM_DAYS = 30
PERCENTILES = (50, 80, 90, 99)
DAY = timedelta(days=1)


def allowed_granularities(days: int) -> tuple[Granularity, ...]:
    """Spec §9.2: a range of ≤1 day → minute/hour/day; 2–7 days → hour/day; 8–30 days → day only."""
    if days <= 1:
        return ("minute", "hour", "day")
    if days <= 7:
        return ("hour", "day")
    return ("day",)


def _bad(reason: str) -> PlatformError:
    return PlatformError("MaaS.0400", reason=reason)


class UsageFilter(BaseModel):
    """What to count: the time range, bucket size and filters (the query string of the REST API)."""

    range: RangeName = Field("today", description="today | yesterday | 3d | 7d | 14d (calendar days ending today) "
                                                  "| custom (start and end, at most 30 days)")
    start: datetime | None = Field(None, description="range=custom: first instant (a naive time is in `tz`)")
    end: datetime | None = Field(None, description="range=custom: end instant, exclusive (a naive time is in `tz`)")
    granularity: Granularity | None = Field(None, description="bucket size; default hour, or day for ranges over "
                                                             "7 days")
    tz: str = Field("UTC", description="IANA time zone of day/hour boundaries and of the times answered")
    service_type: ServiceType | None = Field(None, description="service | commercial | free | endpoint")
    service_id: str | None = Field(None, description="a service id or preset model id")
    key_ids: list[str] = Field(default_factory=list, description="API key ids; none means every key")
    client_ip: str | None = Field(None, description="client IP; empty string means calls with an unknown IP")

    @model_validator(mode="after")
    def _check(self) -> UsageFilter:
        try:
            zone = ZoneInfo(self.tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise _bad(f"unknown time zone {self.tz!r}") from None
        if self.range == "custom":
            if self.start is None or self.end is None:
                raise _bad("range=custom needs start and end")
            start, end = _aware(self.start, zone), _aware(self.end, zone)
            if end <= start:
                raise _bad("end must be after start")
            if end - start > MAX_CUSTOM_DAYS * DAY:
                raise _bad(f"a custom range is at most {MAX_CUSTOM_DAYS} days")
            days = math.ceil((end - start) / DAY)
        else:
            if self.start is not None or self.end is not None:
                raise _bad("start and end are for range=custom only")
            days = RANGE_DAYS[self.range]
        allowed = allowed_granularities(days)
        if self.granularity is None:
            self.granularity = "hour" if "hour" in allowed else "day"
        elif self.granularity not in allowed:
            raise _bad(f"granularity {self.granularity!r} is not allowed for a range of {days} day(s); "
                       f"use {' or '.join(allowed)}")
        return self

    def window(self, now: datetime | None = None) -> tuple[datetime, datetime]:
        """[start, end) in `tz`. `now` (default: the clock) ends today's partial day."""
        zone = ZoneInfo(self.tz)
        if self.range == "custom":
            return _aware(self.start, zone), _aware(self.end, zone)
        now = (now or datetime.now(timezone.utc)).astimezone(zone)
        today = datetime.combine(now.date(), time.min, zone)
        if self.range == "yesterday":
            return datetime.combine(now.date() - DAY, time.min, zone), today
        return datetime.combine(now.date() - (RANGE_DAYS[self.range] - 1) * DAY, time.min, zone), now


class UsageQuery(UsageFilter):
    project_id: str = DEFAULT_PROJECT


def _aware(moment: datetime, zone: ZoneInfo) -> datetime:
    return moment.replace(tzinfo=zone) if moment.tzinfo is None else moment.astimezone(zone)


# -- answers ---------------------------------------------------------------------------------------
class UsageTotals(BaseModel):
    calls: int = 0
    failures: int = 0  # 4xx + 5xx
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class ServiceUsage(BaseModel):
    service_type: str
    service_id: str
    calls: int
    failures: int
    failure_rate: float  # %
    total_tokens: int
    prompt_tokens: int
    completion_tokens: int
    avg_latency_ms: float | None  # successful calls; None: no successful call
    avg_ttft_ms: float | None  # successful streams; None: not applicable
    avg_tpot_ms: float | None


class UsageSummary(BaseModel):
    start: datetime
    end: datetime
    totals: UsageTotals
    services: list[ServiceUsage]


class Stats(BaseModel):
    """AVG/MAX and nearest-rank percentiles of one metric in one bucket; all None when nothing was measured."""

    avg: float | None = None
    max: float | None = None
    p50: float | None = None
    p80: float | None = None
    p90: float | None = None
    p99: float | None = None


class SeriesBucket(BaseModel):
    start: datetime
    end: datetime
    calls: int
    success: int
    failed: int
    failure_rate: float  # %
    rpm: float  # calls per minute of the bucket's part inside the range
    tpm: float  # tokens (input + output) per minute, likewise
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    avg_latency_ms: float | None  # successful calls
    ttft_ms: Stats  # successful streams
    tpot_ms: Stats
    prompt_size: Stats  # input tokens per successful call
    completion_size: Stats
    errors: dict[str, int]  # error code (or HTTP status when the call had none) -> count


class UsageSeries(BaseModel):
    start: datetime
    end: datetime
    granularity: Granularity
    tz: str
    buckets: list[SeriesBucket]


class ErrorCount(BaseModel):
    code: str  # platform error code, or the HTTP status when the call had none
    status: int
    count: int
    percent: float  # of all failed calls
    message: str


class ErrorGroup(BaseModel):
    group: Literal["4xx", "5xx"]
    count: int
    percent: float
    codes: list[ErrorCount]


class FailureReport(BaseModel):
    start: datetime
    end: datetime
    total: int
    groups: list[ErrorGroup]


# -- queries ---------------------------------------------------------------------------------------
def _r(value: float | None) -> float | None:
    return None if value is None else round(float(value), 3)  # spec Table 9-3: 3 decimal places


def _rate(part: int, whole: int) -> float:
    return round(100.0 * part / whole, 3) if whole else 0.0


def _where(q: UsageQuery, start: datetime, end: datetime) -> ColumnElement[bool]:
    u = UsageRecord
    conditions = [u.project_id == q.project_id, u.ts >= start.timestamp(), u.ts < end.timestamp()]
    if q.service_type:
        conditions.append(u.service_type == q.service_type)
    if q.service_id:
        conditions.append(u.service_id == q.service_id)
    if q.key_ids:
        conditions.append(u.key_id.in_(q.key_ids))
    if q.client_ip is not None:  # "" is a real value: calls whose IP was unknown
        conditions.append(u.client_ip == q.client_ip)
    return and_(*conditions)


def summary(session: Session, q: UsageQuery, now: datetime | None = None) -> UsageSummary:
    """The overview cards (Table 9-3) and the service list (Table 9-4)."""
    start, end = q.window(now)
    u, ok = UsageRecord, UsageRecord.status_code < 400
    rows = session.execute(
        select(u.service_type, u.service_id, func.count(u.id), func.sum(case((u.status_code >= 400, 1), else_=0)),
               func.sum(u.prompt_tokens), func.sum(u.completion_tokens), func.avg(case((ok, u.latency_ms))),
               func.avg(case((ok, u.ttft_ms))), func.avg(case((ok, u.tpot_ms))))
        .where(_where(q, start, end)).group_by(u.service_type, u.service_id).order_by(u.service_type, u.service_id)
    ).all()
    services, totals = [], UsageTotals()
    for stype, sid, calls, failures, prompt, completion, latency, ttft, tpot in rows:
        calls, failures, prompt, completion = int(calls), int(failures), int(prompt or 0), int(completion or 0)
        services.append(ServiceUsage(
            service_type=stype, service_id=sid, calls=calls, failures=failures, failure_rate=_rate(failures, calls),
            total_tokens=prompt + completion, prompt_tokens=prompt, completion_tokens=completion,
            avg_latency_ms=_r(latency), avg_ttft_ms=_r(ttft), avg_tpot_ms=_r(tpot)))
        totals.calls += calls
        totals.failures += failures
        totals.prompt_tokens += prompt
        totals.completion_tokens += completion
    totals.total_tokens = totals.prompt_tokens + totals.completion_tokens
    return UsageSummary(start=start, end=end, totals=totals, services=services)


def _floor(moment: datetime, granularity: Granularity) -> datetime:
    if granularity == "minute":
        return moment.replace(second=0, microsecond=0)
    if granularity == "hour":
        return moment.replace(minute=0, second=0, microsecond=0)
    return datetime.combine(moment.date(), time.min, moment.tzinfo)


def _next(moment: datetime, granularity: Granularity) -> datetime:
    if granularity == "day":  # wall-clock days: a DST day is 23 or 25 hours long
        return datetime.combine(moment.date() + DAY, time.min, moment.tzinfo)
    step = timedelta(minutes=1) if granularity == "minute" else timedelta(hours=1)
    return (moment.astimezone(timezone.utc) + step).astimezone(moment.tzinfo)  # absolute, not wall-clock, steps


def bucket_edges(start: datetime, end: datetime, granularity: Granularity) -> list[datetime]:
    """Boundaries of the buckets covering [start, end), aligned to the granularity in start's time zone."""
    edges = [_floor(start, granularity)]
    while edges[-1] < end:
        edges.append(_next(edges[-1], granularity))
    return edges


def _percentile(ordered: list[float], p: int) -> float:
    return ordered[max(0, (p * len(ordered) + 99) // 100 - 1)]  # nearest rank: an observed value


def stats(values: list[float]) -> Stats:
    if not values:
        return Stats()
    ordered = sorted(values)
    return Stats(avg=_r(sum(ordered) / len(ordered)), max=_r(ordered[-1]),
                 **{f"p{p}": _r(_percentile(ordered, p)) for p in PERCENTILES})


class _Acc:
    def __init__(self) -> None:
        self.calls = self.failed = self.prompt = self.completion = 0
        self.latency: list[float] = []
        self.ttft: list[float] = []
        self.tpot: list[float] = []
        self.prompt_sizes: list[float] = []
        self.completion_sizes: list[float] = []
        self.errors: dict[str, int] = {}


def series(session: Session, q: UsageQuery, now: datetime | None = None) -> UsageSeries:
    """The monitoring charts (Table 9-5): one bucket per granularity step, empty buckets included."""
    start, end = q.window(now)
    edges = bucket_edges(start, end, q.granularity)
    edge_ts = [e.timestamp() for e in edges]
    accs = [_Acc() for _ in edges[:-1]]
    u = UsageRecord
    rows = session.execute(select(u.ts, u.status_code, u.error_code, u.prompt_tokens, u.completion_tokens,
                                  u.latency_ms, u.ttft_ms, u.tpot_ms).where(_where(q, start, end)))
    for ts, status, error_code, prompt, completion, latency, ttft, tpot in rows:
        acc = accs[bisect.bisect_right(edge_ts, ts) - 1]
        acc.calls += 1
        acc.prompt += prompt
        acc.completion += completion
        if status >= 400:
            acc.failed += 1
            code = error_code or str(status)
            acc.errors[code] = acc.errors.get(code, 0) + 1
            continue
        acc.latency.append(latency)
        acc.prompt_sizes.append(prompt)
        acc.completion_sizes.append(completion)
        if ttft is not None:
            acc.ttft.append(ttft)
        if tpot is not None:
            acc.tpot.append(tpot)
    buckets = []
    for acc, lo, hi in zip(accs, edges, edges[1:]):
        minutes = (min(hi, end) - max(lo, start)).total_seconds() / 60  # the first/last bucket may be partial
        tokens = acc.prompt + acc.completion
        buckets.append(SeriesBucket(
            start=lo, end=hi, calls=acc.calls, success=acc.calls - acc.failed, failed=acc.failed,
            failure_rate=_rate(acc.failed, acc.calls), rpm=_r(acc.calls / minutes if minutes else 0.0),
            tpm=_r(tokens / minutes if minutes else 0.0), prompt_tokens=acc.prompt,
            completion_tokens=acc.completion, total_tokens=tokens, avg_latency_ms=stats(acc.latency).avg,
            ttft_ms=stats(acc.ttft), tpot_ms=stats(acc.tpot), prompt_size=stats(acc.prompt_sizes),
            completion_size=stats(acc.completion_sizes), errors=dict(sorted(acc.errors.items()))))
    return UsageSeries(start=start, end=end, granularity=q.granularity, tz=q.tz, buckets=buckets)


def error_message(code: str, status: int) -> str:
    """The catalogue's message (placeholders shown as <name>), else the HTTP reason phrase."""
    spec = PLATFORM_ERRORS.get(code)
    if spec is not None and not re.fullmatch(r"\{\w+\}", spec.message):
        return re.sub(r"\{(\w+)\}", r"<\1>", spec.message)
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ""


def failures(session: Session, q: UsageQuery, now: datetime | None = None) -> FailureReport:
    """The failure details tab (Table 9-6): 4xx and 5xx groups, each code's count and share of all errors."""
    start, end = q.window(now)
    u = UsageRecord
    rows = session.execute(select(u.status_code, u.error_code, func.count(u.id))
                           .where(_where(q, start, end), u.status_code >= 400)
                           .group_by(u.status_code, u.error_code)).all()
    total = sum(int(count) for *_, count in rows)
    groups = []
    for group in ("4xx", "5xx"):
        codes = [ErrorCount(code=code or str(status), status=status, count=int(count),
                            percent=_rate(int(count), total), message=error_message(code, status))
                 for status, code, count in rows if (status >= 500) == (group == "5xx")]
        if codes:
            codes.sort(key=lambda c: (-c.count, c.code))
            count = sum(c.count for c in codes)
            groups.append(ErrorGroup(group=group, count=count, percent=_rate(count, total), codes=codes))
    return FailureReport(start=start, end=end, total=total, groups=groups)


# -- export ----------------------------------------------------------------------------------------
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
        raise _bad(f"unknown metrics {unknown}; choose from {list(CHARTS)}")
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
