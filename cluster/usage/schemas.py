"""Call statistics schemas (spec §9.2): the query (range, granularity, filters: the REST query string and
the CLI options) and the answers (overview, per-service rows, time series, failure details)."""

from __future__ import annotations

import math
from datetime import datetime, time, timedelta, timezone
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, Field, model_validator

from cluster.state.db import DEFAULT_PROJECT
from serve_apps.errors import PlatformError

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


def bad(reason: str) -> PlatformError:
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
            raise bad(f"unknown time zone {self.tz!r}") from None
        if self.range == "custom":
            if self.start is None or self.end is None:
                raise bad("range=custom needs start and end")
            start, end = _aware(self.start, zone), _aware(self.end, zone)
            if end <= start:
                raise bad("end must be after start")
            if end - start > MAX_CUSTOM_DAYS * DAY:
                raise bad(f"a custom range is at most {MAX_CUSTOM_DAYS} days")
            days = math.ceil((end - start) / DAY)
        else:
            if self.start is not None or self.end is not None:
                raise bad("start and end are for range=custom only")
            days = RANGE_DAYS[self.range]
        allowed = allowed_granularities(days)
        if self.granularity is None:
            self.granularity = "hour" if "hour" in allowed else "day"
        elif self.granularity not in allowed:
            raise bad(f"granularity {self.granularity!r} is not allowed for a range of {days} day(s); "
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
    # Calls from the console's playground in the range: recorded and limited, not in the figures above (§5.1).
    playground_calls: int = 0
    playground_tokens: int = 0


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




AUDIT_RANGE = r"^[1-9][0-9]{0,3}[mh]$"  # 30m, 1h, 24h: the engines' counters are kept for 25 hours
MAX_AUDIT_S = 24 * 3600


def audit_seconds(range_: str) -> int:
    """`30m` / `1h` -> seconds; at most a day."""
    seconds = int(range_[:-1]) * (60 if range_.endswith("m") else 3600)
    if seconds > MAX_AUDIT_S:
        raise bad("an audit covers at most 24h")
    return seconds


class AuditRow(BaseModel):
    """One engine's model: what the ledger billed against what the engine says it processed."""

    model: str  # a preset model id, or a service id
    calls: int
    ledger_prompt_tokens: int
    engine_prompt_tokens: int
    prompt_difference: int  # ledger - engine
    ledger_completion_tokens: int
    engine_generation_tokens: int
    completion_difference: int


class UsageAudit(BaseModel):
    start: datetime
    end: datetime
    models: list[AuditRow]
