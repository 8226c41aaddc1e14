"""Call statistics over `usage_records` (spec §9.2): overview, per-service rows, time series and failure
details. Pure functions of a Session and a UsageQuery; the same on SQLite and PostgreSQL (plain SQL
aggregates only; percentiles and time buckets are computed here, in Python)."""

from __future__ import annotations

import bisect
import http
import re
from datetime import datetime, time, timedelta, timezone

from sqlalchemy import ColumnElement, and_, case, func, select
from sqlalchemy.orm import Session

from cluster.state.db import UsageRecord
from cluster.usage.schemas import (DAY, PERCENTILES, ErrorCount, ErrorGroup, FailureReport, Granularity, SeriesBucket,
                                   ServiceUsage, Stats, UsageQuery, UsageSeries, UsageSummary, UsageTotals)
from serve_apps.errors import PLATFORM_ERRORS

def _r(value: float | None) -> float | None:
    return None if value is None else round(float(value), 3)  # spec Table 9-3: 3 decimal places


def _rate(part: int, whole: int) -> float:
    return round(100.0 * part / whole, 3) if whole else 0.0


def _where(q: UsageQuery, start: datetime, end: datetime, playground: bool = False) -> ColumnElement[bool]:
    u = UsageRecord
    # Playground calls are recorded (limits and free quotas count them) but are not call statistics (§5.1):
    # the summary shows them apart.
    conditions = [u.project_id == q.project_id, u.ts >= start.timestamp(), u.ts < end.timestamp(),
                  u.playground.is_(playground)]
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
        select(u.service_type, u.service_id, func.sum(u.calls), func.sum(case((u.status_code >= 400, u.calls), else_=0)),
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
    playground = session.execute(
        select(func.coalesce(func.sum(u.calls), 0), func.coalesce(func.sum(u.prompt_tokens + u.completion_tokens), 0))
        .where(_where(q, start, end, playground=True))).one()
    totals.playground_calls, totals.playground_tokens = int(playground[0]), int(playground[1])
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
                                  u.latency_ms, u.ttft_ms, u.tpot_ms, u.calls).where(_where(q, start, end)))
    for ts, status, error_code, prompt, completion, latency, ttft, tpot, calls in rows:
        acc = accs[bisect.bisect_right(edge_ts, ts) - 1]
        acc.calls += calls
        acc.prompt += prompt
        acc.completion += completion
        if status >= 400:
            acc.failed += calls
            code = error_code or str(status)
            acc.errors[code] = acc.errors.get(code, 0) + calls
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
    rows = session.execute(select(u.status_code, u.error_code, func.sum(u.calls))
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


