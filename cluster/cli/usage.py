"""`maas usage ...`: call statistics (spec §9.2) read from the control plane's REST API."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

import httpx
import typer
from rich.table import Table

from cluster.cli import common as cli_common
from cluster.cli.common import JsonOpt, ProjectOpt, console, fail, print_json
from cluster.cli.client import ApiError

usage_app = typer.Typer(help="Call statistics: overview, time series, failures, XLSX export.",
                        no_args_is_help=True)

RangeOpt = typer.Option("today", "--range", "-r", help="today | yesterday | 3d | 7d | 14d | custom.")
StartOpt = typer.Option(None, help="--range custom: start, in --tz (YYYY-MM-DD[THH:MM:SS]).")
EndOpt = typer.Option(None, help="--range custom: end, exclusive, in --tz (at most 30 days after start).")
GranularityOpt = typer.Option(None, "--granularity", "-g",
                              help="minute | hour | day (default hour; day for ranges over 7 days).")
TzOpt = typer.Option("UTC", help="IANA time zone of day/hour boundaries and shown times.")
ServiceTypeOpt = typer.Option(None, help="service | commercial | free | endpoint.")
ServiceIdOpt = typer.Option(None, help="A service id or preset model id.")
KeyOpt = typer.Option(None, "--key", help="API key id (repeat for several; default all keys).")
IpOpt = typer.Option(None, "--ip", help="Client IP ('' for calls with an unknown IP).")


def _params(range_: str, start: datetime | None, end: datetime | None, granularity: str | None, tz: str,
            service_type: str | None, service_id: str | None, keys: list[str] | None, ip: str | None) -> dict:
    params = {"range": range_, "start": start and start.isoformat(), "end": end and end.isoformat(),
              "granularity": granularity, "tz": tz, "service_type": service_type, "service_id": service_id,
              "key_ids": keys or None, "client_ip": ip}
    return {name: value for name, value in params.items() if value is not None}


def _get(project: str, what: str, params: dict):
    return cli_common.call("GET", f"/{project}/usage/{what}", params=params)


def _num(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:,.{digits}f}".rstrip("0").rstrip(".")


def _when(iso: str, granularity: str) -> str:
    return datetime.fromisoformat(iso).strftime("%Y-%m-%d" if granularity == "day" else "%Y-%m-%d %H:%M")


@usage_app.command("summary")
def summary(project: str = ProjectOpt, range_: str = RangeOpt, start: datetime = StartOpt, end: datetime = EndOpt,
            tz: str = TzOpt, service_type: str = ServiceTypeOpt, service_id: str = ServiceIdOpt,
            key: list[str] = KeyOpt, ip: str = IpOpt, as_json: bool = JsonOpt) -> None:
    """Totals (calls, failures = 4xx + 5xx, tokens) and one row per service."""
    data = _get(project, "summary", _params(range_, start, end, None, tz, service_type, service_id, key, ip))
    if as_json:
        return print_json(data)
    totals = data["totals"]
    cards = Table("calls", "failures", "total tokens", "input tokens", "output tokens",
                  title=f"{data['start'][:16]} .. {data['end'][:16]}")
    cards.add_row(*(f"{totals[k]:,}" for k in ("calls", "failures", "total_tokens", "prompt_tokens",
                                              "completion_tokens")))
    console.print(cards)
    table = Table("type", "service", "calls", "failures", "fail %", "tokens (k)", "in (k)", "out (k)",
                  "latency ms", "TTFT ms", "TPOT ms")
    for row in data["services"]:
        table.add_row(row["service_type"], row["service_id"], f"{row['calls']:,}", f"{row['failures']:,}",
                      _num(row["failure_rate"]), *(_num(row[k] / 1000) for k in
                                                   ("total_tokens", "prompt_tokens", "completion_tokens")),
                      _num(row["avg_latency_ms"], 1), _num(row["avg_ttft_ms"], 1), _num(row["avg_tpot_ms"], 1))
    console.print(table)


@usage_app.command("series")
def series(project: str = ProjectOpt, range_: str = RangeOpt, start: datetime = StartOpt, end: datetime = EndOpt,
           granularity: str = GranularityOpt, tz: str = TzOpt, service_type: str = ServiceTypeOpt,
           service_id: str = ServiceIdOpt, key: list[str] = KeyOpt, ip: str = IpOpt,
           as_json: bool = JsonOpt) -> None:
    """The monitoring charts per time bucket (--json has every statistic: AVG/MAX/P50/P80/P90/P99)."""
    data = _get(project, "series",
                _params(range_, start, end, granularity, tz, service_type, service_id, key, ip))
    if as_json:
        return print_json(data)
    busy = [b for b in data["buckets"] if b["calls"]]
    table = Table("time", "calls", "ok", "failed", "fail %", "RPM", "TPM", "in", "out", "latency ms",
                  "TTFT avg", "TTFT p99", "TPOT avg", "TPOT p99", "errors",
                  caption=f"{len(data['buckets']) - len(busy)} of {len(data['buckets'])} {data['granularity']} "
                          f"buckets had no calls and are not shown ({data['tz']}).")
    for b in busy:
        table.add_row(_when(b["start"], data["granularity"]), str(b["calls"]), str(b["success"]), str(b["failed"]),
                      _num(b["failure_rate"]), _num(b["rpm"]), _num(b["tpm"]), str(b["prompt_tokens"]),
                      str(b["completion_tokens"]), _num(b["avg_latency_ms"], 1), _num(b["ttft_ms"]["avg"], 1),
                      _num(b["ttft_ms"]["p99"], 1), _num(b["tpot_ms"]["avg"], 1), _num(b["tpot_ms"]["p99"], 1),
                      ", ".join(f"{code}: {n}" for code, n in b["errors"].items()) or "-")
    console.print(table)


@usage_app.command("failures")
def failures(project: str = ProjectOpt, range_: str = RangeOpt, start: datetime = StartOpt, end: datetime = EndOpt,
             tz: str = TzOpt, service_type: str = ServiceTypeOpt, service_id: str = ServiceIdOpt,
             key: list[str] = KeyOpt, ip: str = IpOpt, as_json: bool = JsonOpt) -> None:
    """Failed calls grouped by 4xx / 5xx, then by error code, with each one's share of all errors."""
    data = _get(project, "failures", _params(range_, start, end, None, tz, service_type, service_id, key, ip))
    if as_json:
        return print_json(data)
    table = Table("group", "code", "count", "% of errors", "message", title=f"{data['total']:,} failed calls")
    for group in data["groups"]:
        table.add_row(f"[bold]{group['group']}[/bold]", "", f"{group['count']:,}", _num(group["percent"]), "")
        for code in group["codes"]:
            table.add_row("", code["code"], f"{code['count']:,}", _num(code["percent"]), code["message"])
    console.print(table)


@usage_app.command("export")
def export(project: str = ProjectOpt, range_: str = RangeOpt, start: datetime = StartOpt, end: datetime = EndOpt,
           granularity: str = GranularityOpt, tz: str = TzOpt, service_type: str = ServiceTypeOpt,
           service_id: str = ServiceIdOpt, key: list[str] = KeyOpt, ip: str = IpOpt,
           metric: list[str] = typer.Option(None, "--metric", help="A chart to export (repeat; default all)."),
           output: Path = typer.Option(None, "--output", "-o", help="File to write (default: the server's name)."),
           as_json: bool = JsonOpt) -> None:
    """Download the charts as an .xlsx workbook, one sheet per chart."""
    params = _params(range_, start, end, granularity, tz, service_type, service_id, key, ip)
    if metric:
        params["metrics"] = metric
    try:  # raw bytes: ControlPlaneClient.call decodes JSON
        response = cli_common.client().http.get(f"/{project}/usage/export", params=params)
    except httpx.HTTPError as exc:
        return fail(exc)
    if response.status_code >= 400:
        try:
            body = response.json()
        except ValueError:
            body = response.text
        return fail(ApiError(response.status_code, body))
    found = re.search(r'filename="([^"]+)"', response.headers.get("content-disposition", ""))
    path = output or Path(found.group(1) if found else f"usage-{project}.xlsx")
    path.write_bytes(response.content)
    if as_json:
        return print_json({"path": str(path), "bytes": len(response.content)})
    console.print(f"Wrote {path} ({len(response.content):,} bytes).")


@usage_app.command("audit")
def audit(range_: str = typer.Option("1h", "--range", "-r", help="30m, 1h, ... up to 24h."),
          as_json: bool = JsonOpt) -> None:
    """The admin's check that billing matches the engines: per model, the tokens in the ledger against the
    tokens the engines processed (vLLM's own counters) over the range. Exit status 1 if any differ."""
    data = cli_common.call("GET", "/usage/audit", params={"range": range_})
    if as_json:
        print_json(data)
    else:
        table = Table("model", "calls", "ledger in", "engine in", "diff in", "ledger out", "engine out", "diff out",
                      title=f"{data['start'][:19]} .. {data['end'][:19]}")
        for row in data["models"]:
            table.add_row(row["model"], f"{row['calls']:,}", f"{row['ledger_prompt_tokens']:,}",
                          f"{row['engine_prompt_tokens']:,}", f"{row['prompt_difference']:+,}",
                          f"{row['ledger_completion_tokens']:,}", f"{row['engine_generation_tokens']:,}",
                          f"{row['completion_difference']:+,}")
        console.print(table)
    if any(row["prompt_difference"] or row["completion_difference"] for row in data["models"]):
        raise typer.Exit(1)
