"""Call statistics (spec §9.2) on real databases: SQLite, and PostgreSQL with MAAS_TEST_DATABASE=postgres
(tests/pg.py) or MAAS_TEST_POSTGRES_URL.

No Ray: the statistics are pure functions of a Session; the REST routes and the CLI run on a local uvicorn.
(The rules that need no database: tests/unit/test_usage_rules.py.)"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from io import BytesIO

import pytest
from openpyxl import load_workbook
from sqlalchemy import delete

from cluster.state.db import Project, UsageRecord, migrate, session_scope
from cluster.usage import stats as usage_stats
from cluster.usage.export import export_xlsx
from cluster.usage.schemas import UsageQuery
from serve_apps.errors import PlatformError
from tests.helpers import DATABASES, free_port

UTC = timezone.utc
NOW = datetime(2025, 3, 10, 12, 30, tzinfo=UTC)  # "today" is 2025-03-10 00:00 .. 12:30 UTC
DAY0 = datetime(2025, 3, 10, tzinfo=UTC)


def at(hours: float = 0, days: int = 0) -> float:
    return (DAY0 + timedelta(days=days, hours=hours)).timestamp()


def hm(h: int, m: int, s: float = 0) -> float:
    return at(h + m / 60 + s / 3600)


# (ts, service_type, service_id, key, ip, prompt, completion, status, error_code, latency, ttft, tpot)
ROWS = [
    (hm(10, 5, 1), "service", "svc-a", "k1", "1.1.1.1", 10, 20, 200, "", 100.0, 10.0, 2.0),
    (hm(10, 5, 30), "service", "svc-a", "k1", "1.1.1.1", 30, 40, 200, "", 300.0, 30.0, 4.0),
    (hm(10, 6, 0), "service", "svc-a", "k2", "2.2.2.2", 0, 0, 429, "ModelArts.81101", 1.0, None, None),
    (hm(11, 59, 59.9), "free", "qwen-free", "k2", "", 50, 10, 200, "", 200.0, None, None),
    (hm(12, 0, 0), "service", "svc-a", "k1", "1.1.1.1", 5, 0, 500, "", 20.0, None, None),
    (hm(12, 10, 0), "commercial", "ds-v3", "k3", "3.3.3.3", 0, 0, 401, "ModelArts.81003", 2.0, None, None),
    (hm(12, 31, 0), "service", "svc-a", "k1", "1.1.1.1", 7, 7, 200, "", 10.0, None, None),  # after NOW
    (at(-1), "service", "svc-a", "k1", "1.1.1.1", 100, 100, 200, "", 50.0, None, None),  # yesterday 23:00
    (at(0, days=-2), "service", "svc-a", "k1", "1.1.1.1", 1, 1, 200, "", 5.0, None, None),  # 03-08 00:00
    (at(0, days=-2) - 1, "service", "svc-a", "k1", "1.1.1.1", 2, 2, 200, "", 5.0, None, None),  # 03-07 23:59:59
]


def _record(project: str, ts, stype, sid, key, ip, prompt, completion, status, code, latency, ttft, tpot):
    return UsageRecord(request_id=uuid.uuid4().hex, ts=ts, project_id=project, key_id=key, service_type=stype,
                       service_id=sid, model=sid, prompt_tokens=prompt, completion_tokens=completion,
                       status_code=status, error_code=code, latency_ms=latency, ttft_ms=ttft, tpot_ms=tpot,
                       client_ip=ip, stream=ttft is not None)


@pytest.fixture(params=DATABASES)
def db_url(request, tmp_path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'maas.db'}"
    else:
        from tests.pg import postgres_url

        # A new database on the tests' throwaway server (started, or apt-installed, on first use).
        url = os.environ.get("MAAS_TEST_POSTGRES_URL") or postgres_url(f"usage_{uuid.uuid4().hex[:10]}")
    migrate(url)
    return url


@pytest.fixture
def db(db_url):
    """A session over ROWS in a project of its own (tests share a PostgreSQL database), plus a decoy project."""
    project = f"p{uuid.uuid4().hex[:12]}"
    with session_scope(db_url) as session:
        session.add_all(_record(project, *row) for row in ROWS)
        session.add(_record(f"{project}x", *ROWS[0]))
    with session_scope(db_url) as session:
        yield session, project
    with session_scope(db_url) as session:
        session.execute(delete(UsageRecord).where(UsageRecord.project_id.in_([project, f"{project}x"])))


def q(project: str, **kw) -> UsageQuery:
    return UsageQuery(project_id=project, **kw)


def test_summary_totals_and_services(db):
    session, project = db
    result = usage_stats.summary(session, q(project), now=NOW)
    assert (result.start, result.end) == (DAY0, NOW)
    assert result.totals.model_dump() == {"calls": 6, "failures": 3, "prompt_tokens": 95, "completion_tokens": 70,
                                          "total_tokens": 165, "playground_calls": 0, "playground_tokens": 0}
    rows = {(s.service_type, s.service_id): s.model_dump(exclude={"service_type", "service_id"})
            for s in result.services}
    assert list(rows) == [("commercial", "ds-v3"), ("free", "qwen-free"), ("service", "svc-a")]
    assert rows["commercial", "ds-v3"] == dict(calls=1, failures=1, failure_rate=100.0, total_tokens=0,
                                               prompt_tokens=0, completion_tokens=0, avg_latency_ms=None,
                                               avg_ttft_ms=None, avg_tpot_ms=None)
    assert rows["free", "qwen-free"] == dict(calls=1, failures=0, failure_rate=0.0, total_tokens=60, prompt_tokens=50,
                                             completion_tokens=10, avg_latency_ms=200.0, avg_ttft_ms=None,
                                             avg_tpot_ms=None)
    # latency/TTFT/TPOT average the successful calls only (the 429 and the 500 are left out)
    assert rows["service", "svc-a"] == dict(calls=4, failures=2, failure_rate=50.0, total_tokens=105,
                                            prompt_tokens=45, completion_tokens=60, avg_latency_ms=200.0,
                                            avg_ttft_ms=20.0, avg_tpot_ms=3.0)


def test_ranges(db):
    session, project = db

    def calls(**kw):
        return usage_stats.summary(session, q(project, **kw), now=NOW).totals.calls

    assert calls(range="yesterday") == 1
    assert calls(range="3d") == 8  # 03-08 00:00 .. now
    assert calls(range="7d") == 9  # one more on 03-07 23:59:59
    assert calls(range="custom", start=datetime(2025, 3, 9, 22), end=datetime(2025, 3, 10, 10, 6)) == 3
    assert calls(tz="Asia/Shanghai") == 7  # today in UTC+8 began at 03-09 16:00 UTC


@pytest.mark.parametrize("filters, expected_calls, expected_failures", [
    ({"key_ids": ["k1"]}, 3, 1),
    ({"key_ids": ["k2", "k3"]}, 3, 2),
    ({"client_ip": "1.1.1.1"}, 3, 1),
    ({"client_ip": ""}, 1, 0),
    ({"service_type": "service"}, 4, 2),
    ({"service_type": "free"}, 1, 0),
    ({"service_id": "ds-v3"}, 1, 1),
    ({"service_type": "service", "key_ids": ["k2"], "client_ip": "2.2.2.2"}, 1, 1),
])
def test_filters(db, filters, expected_calls, expected_failures):
    session, project = db
    totals = usage_stats.summary(session, q(project, **filters), now=NOW).totals
    assert (totals.calls, totals.failures) == (expected_calls, expected_failures)


def test_failure_rate_has_three_decimals(db):
    session, project = db
    (row,) = usage_stats.summary(session, q(project, key_ids=["k1"]), now=NOW).services
    assert (row.calls, row.failures, row.failure_rate) == (3, 1, 33.333)


def test_series_by_hour(db):
    session, project = db
    result = usage_stats.series(session, q(project, granularity="hour"), now=NOW)
    assert [b.start.hour for b in result.buckets] == list(range(13))
    assert result.buckets[-1].end == datetime(2025, 3, 10, 13, tzinfo=UTC)
    assert sum(b.calls for b in result.buckets) == 6
    ten, eleven, noon = result.buckets[10], result.buckets[11], result.buckets[12]
    assert (ten.calls, ten.success, ten.failed, ten.failure_rate) == (3, 2, 1, 33.333)
    assert (ten.prompt_tokens, ten.completion_tokens, ten.total_tokens) == (40, 60, 100)
    assert (ten.rpm, ten.tpm, ten.avg_latency_ms) == (0.05, 1.667, 200.0)
    assert ten.ttft_ms.model_dump() == dict(avg=20.0, max=30.0, p50=10.0, p80=30.0, p90=30.0, p99=30.0)
    assert ten.tpot_ms.model_dump() == dict(avg=3.0, max=4.0, p50=2.0, p80=4.0, p90=4.0, p99=4.0)
    assert ten.prompt_size.model_dump() == dict(avg=20.0, max=30.0, p50=10.0, p80=30.0, p90=30.0, p99=30.0)
    assert ten.completion_size.avg == 30.0
    assert ten.errors == {"ModelArts.81101": 1}
    assert (eleven.calls, eleven.ttft_ms.avg, eleven.prompt_size.p99) == (1, None, 50.0)  # 11:59:59.9, not a stream
    # the 12:00 bucket holds the calls at 12:00:00 and 12:10 (12:31 is after now); it is 30 minutes long so far
    assert (noon.calls, noon.failed, noon.failure_rate, noon.rpm) == (2, 2, 100.0, 0.067)
    assert noon.errors == {"500": 1, "ModelArts.81003": 1}
    assert noon.avg_latency_ms is None and noon.ttft_ms.model_dump() == dict.fromkeys(noon.ttft_ms.model_dump())
    empty = result.buckets[0]
    assert (empty.calls, empty.rpm, empty.failure_rate, empty.avg_latency_ms, empty.errors) == (0, 0, 0, None, {})


def test_series_by_minute(db):
    session, project = db
    buckets = usage_stats.series(session, q(project, granularity="minute"), now=NOW).buckets
    assert len(buckets) == 12 * 60 + 30
    by_start = {b.start.strftime("%H:%M"): b for b in buckets if b.calls}
    assert {k: b.calls for k, b in by_start.items()} == {"10:05": 2, "10:06": 1, "11:59": 1, "12:00": 1, "12:10": 1}
    assert by_start["10:05"].rpm == 2.0 and by_start["10:05"].tpm == 100.0
    assert buckets[605].start == datetime(2025, 3, 10, 10, 5, tzinfo=UTC)


def test_series_by_day(db):
    session, project = db
    result = usage_stats.series(session, q(project, range="7d", granularity="day"), now=NOW)
    assert [b.start.day for b in result.buckets] == [4, 5, 6, 7, 8, 9, 10]
    assert [b.calls for b in result.buckets] == [0, 0, 0, 1, 1, 1, 6]
    assert result.buckets[-1].rpm == round(6 / 750, 3)  # today is 12.5 hours old
    assert result.buckets[-2].rpm == round(1 / 1440, 3)


def test_series_in_a_half_hour_time_zone(db):
    session, project = db
    result = usage_stats.series(session, q(project, granularity="hour", tz="Asia/Kolkata"), now=NOW)
    assert result.start == datetime(2025, 3, 10, tzinfo=result.start.tzinfo)  # local midnight, 03-09 18:30 UTC
    assert result.start.utcoffset() == timedelta(hours=5, minutes=30)
    busy = {b.start.strftime("%H:%M"): b.calls for b in result.buckets if b.calls}
    # local hours start at :30 UTC: 23:00 UTC is 04:30; 10:05-10:06 is 15:35-15:36; 11:59-12:10 is 17:29-17:40
    assert busy == {"04:00": 1, "15:00": 3, "17:00": 3}
    assert result.buckets[-1].start.astimezone(UTC) == datetime(2025, 3, 10, 12, tzinfo=UTC) - timedelta(minutes=30)


def test_custom_range_buckets(db):
    session, project = db
    query = q(project, range="custom", start=datetime(2025, 3, 9, 22, 30), end=datetime(2025, 3, 10, 10, 6))
    assert query.granularity == "hour"
    buckets = usage_stats.series(session, query, now=NOW).buckets
    assert buckets[0].start == datetime(2025, 3, 9, 22, tzinfo=UTC) and len(buckets) == 13
    assert buckets[0].rpm == 0 and buckets[1].calls == 1 and buckets[1].rpm == round(1 / 60, 3)
    assert buckets[-1].calls == 2 and buckets[-1].rpm == round(2 / 6, 3)  # 10:00-10:06 is inside the range


def test_failures_grouped(db):
    session, project = db
    report = usage_stats.failures(session, q(project), now=NOW).model_dump()
    assert report["total"] == 3
    assert report["groups"] == [
        {"group": "4xx", "count": 2, "percent": 66.667, "codes": [
            {"code": "ModelArts.81003", "status": 401, "count": 1, "percent": 33.333,
             "message": "Invalid authorization header."},
            {"code": "ModelArts.81101", "status": 429, "count": 1, "percent": 33.333,
             "message": "Too many requests, exceeded rate limit is <rpm> times per minute."}]},
        {"group": "5xx", "count": 1, "percent": 33.333, "codes": [
            {"code": "500", "status": 500, "count": 1, "percent": 33.333, "message": "Internal Server Error"}]},
    ]
    assert usage_stats.failures(session, q(project, service_type="free"), now=NOW).model_dump()["groups"] == []


def test_export_xlsx(db, tmp_path):
    session, project = db
    path = tmp_path / "usage.xlsx"
    export_xlsx(session, q(project, granularity="hour"), path, now=NOW)
    book = load_workbook(path)
    assert book.sheetnames == ["Calls", "Tokens", "TTFT (ms)", "Input token size", "RPM", "Failure rate (%)",
                               "Errors", "Average latency (ms)", "TPOT (ms)", "Output token size", "TPM"]

    def rows(name):
        return [list(r) for r in book[name].iter_rows(values_only=True)]

    calls = rows("Calls")
    assert calls[0] == ["time", "total", "success", "failed"] and len(calls) == 14
    assert calls[1] == [datetime(2025, 3, 10, 0, 0), 0, 0, 0]
    assert calls[11] == [datetime(2025, 3, 10, 10, 0), 3, 2, 1]
    assert rows("Tokens")[11] == [datetime(2025, 3, 10, 10, 0), 100, 40, 60]
    assert rows("TTFT (ms)")[0] == ["time", "AVG", "MAX", "P50", "P80", "P90", "P99"]
    assert rows("TTFT (ms)")[11][1:] == [20, 30, 10, 30, 30, 30]
    assert rows("TTFT (ms)")[12][1:] == [None] * 6
    assert rows("RPM")[13] == [datetime(2025, 3, 10, 12, 0), 0.067]
    assert rows("TPM")[11][1] == 1.667
    assert rows("Failure rate (%)")[13][1] == 100
    assert rows("Errors")[0] == ["time", "500", "ModelArts.81003", "ModelArts.81101"]
    assert rows("Errors")[11][1:] == [0, 0, 1] and rows("Errors")[13][1:] == [1, 1, 0]
    assert rows("Average latency (ms)")[12][1] == 200


def test_export_chosen_metrics(db):
    session, project = db
    buffer = BytesIO()
    export_xlsx(session, q(project, tz="Asia/Shanghai"), buffer, metrics=["rpm", "calls"], now=NOW)
    book = load_workbook(BytesIO(buffer.getvalue()))
    assert book.sheetnames == ["Calls", "RPM"]  # the charts' order, whatever the order asked
    assert book["Calls"]["A2"].value == datetime(2025, 3, 10, 0, 0)  # local time of the query's zone
    with pytest.raises(PlatformError, match="unknown metrics"):
        export_xlsx(session, q(project), BytesIO(), metrics=["calls", "bogus"], now=NOW)


# -- REST routes and CLI ---------------------------------------------------------------------------
ADMIN = "admin-usage-test"


@pytest.fixture
def control_plane(tmp_path, monkeypatch):
    """The usage routes behind the real admin check, on uvicorn, with calls made around the real clock."""
    import uvicorn
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError

    from cluster.app import platform_error, validation_error
    from cluster.auth import ensure_admin_key
    from cluster.settings import get_settings
    from cluster.usage.router import router

    url = f"sqlite:///{tmp_path / 'maas.db'}"
    port = free_port()
    monkeypatch.setenv("MAAS_DATABASE_URL", url)
    monkeypatch.setenv("MAAS_HOME", str(tmp_path))
    monkeypatch.setenv("MAAS_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("MAAS_ADMIN_KEY", ADMIN)
    get_settings.cache_clear()
    migrate(url)
    now = time.time()
    with session_scope(url) as session:
        ensure_admin_key(session, ADMIN)
        session.add(Project(id="other", name="other"))
        session.add_all(_record("default", now - 120 + row[0] - ROWS[0][0], *row[1:]) for row in ROWS[:6])
    app = FastAPI()
    app.add_exception_handler(PlatformError, platform_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.include_router(router, prefix="/api")
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    window = {"range": "custom", "start": datetime.fromtimestamp(now - 86400, UTC).isoformat(timespec="seconds"),
              "end": datetime.fromtimestamp(now + 86400, UTC).isoformat(timespec="seconds")}
    yield f"http://127.0.0.1:{port}/api/v1", window
    server.should_exit = True
    thread.join(10)
    get_settings.cache_clear()


def test_rest_routes(control_plane):
    import httpx

    base, window = control_plane
    api = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {ADMIN}"})
    assert httpx.get(f"{base}/default/usage/summary").json()["error_code"] == "ModelArts.81002"
    assert httpx.get(f"{base}/default/usage/summary", headers={"Authorization": "Bearer nope"}).status_code == 401
    summary = api.get("/default/usage/summary", params=window).json()
    assert summary["totals"] == {"calls": 6, "failures": 3, "prompt_tokens": 95, "completion_tokens": 70,
                                 "total_tokens": 165, "playground_calls": 0, "playground_tokens": 0}
    only = api.get("/default/usage/summary", params=window | {"key_ids": ["k2", "k3"], "client_ip": ""}).json()
    assert only["totals"]["calls"] == 1  # the repeated key_ids and the empty IP both filter
    series = api.get("/default/usage/series", params=window | {"granularity": "day"}).json()
    assert sum(b["calls"] for b in series["buckets"]) == 6 and series["granularity"] == "day"
    failures = api.get("/default/usage/failures", params=window).json()
    assert [g["group"] for g in failures["groups"]] == ["4xx", "5xx"] and failures["total"] == 3
    export = api.get("/default/usage/export", params=window | {"metrics": ["calls", "tpm"]})
    assert export.headers["content-type"].startswith("application/vnd.openxmlformats")
    assert export.headers["content-disposition"].startswith('attachment; filename="usage-default-')
    assert load_workbook(BytesIO(export.content)).sheetnames == ["Calls", "TPM"]
    assert api.get("/other/usage/summary", params=window).json()["totals"]["calls"] == 0
    missing = api.get("/nope/usage/summary")
    assert (missing.status_code, missing.json()["error_code"]) == (404, "MaaS.0404")
    for params in ({"range": "14d", "granularity": "hour"}, {"granularity": "week"}):
        bad = api.get("/default/usage/series", params=params)
        assert (bad.status_code, bad.json()["error_code"]) == (400, "MaaS.0400")


def test_cli(control_plane, tmp_path, monkeypatch):
    from rich.console import Console
    from typer.testing import CliRunner

    from cluster.cli import usage as usage_cli

    _base, window = control_plane
    monkeypatch.setattr(usage_cli, "console", Console(width=240))
    run = CliRunner().invoke
    custom = ["--range", "custom", "--start", window["start"][:19], "--end", window["end"][:19]]

    done = run(usage_cli.usage_app, ["summary", *custom, "--json"])
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["totals"]["calls"] == 6
    done = run(usage_cli.usage_app, ["summary", *custom, "--key", "k2", "--key", "k3", "--json"])
    assert json.loads(done.stdout)["totals"]["calls"] == 3
    done = run(usage_cli.usage_app, ["summary", *custom, "--service-type", "service"])
    assert done.exit_code == 0 and "svc-a" in done.stdout and "ds-v3" not in done.stdout
    done = run(usage_cli.usage_app, ["series", *custom, "--granularity", "hour", "--ip", "1.1.1.1", "--json"])
    assert sum(b["calls"] for b in json.loads(done.stdout)["buckets"]) == 3
    done = run(usage_cli.usage_app, ["series", *custom, "--granularity", "day"])
    assert done.exit_code == 0 and "ModelArts.81101: 1" in done.stdout and "had no calls" in done.stdout
    done = run(usage_cli.usage_app, ["failures", *custom])
    assert done.exit_code == 0 and "Invalid authorization header." in done.stdout and "5xx" in done.stdout
    assert json.loads(run(usage_cli.usage_app, ["failures", *custom, "--json"]).stdout)["total"] == 3
    out = tmp_path / "out.xlsx"
    done = run(usage_cli.usage_app, ["export", *custom, "--metric", "errors", "-o", str(out), "--json"])
    assert json.loads(done.stdout) == {"path": str(out), "bytes": out.stat().st_size}
    assert load_workbook(out).sheetnames == ["Errors"]
    done = run(usage_cli.usage_app, ["series", "--range", "14d", "--granularity", "minute", "--json"])
    assert done.exit_code == 1 and done.stdout == "" and "MaaS.0400" in done.stderr
