"""What every `maas` sub-command shares: the REST client, JSON output, error printing, common options."""

from __future__ import annotations

import json
import sys
import time

import typer
from rich.console import Console
from rich.table import Table

from cluster.cli.client import ApiError, ControlPlaneClient
from cluster.settings import get_settings

console = Console()
err = Console(stderr=True)
JsonOpt = typer.Option(False, "--json", help="Print one JSON document and nothing else.")
ProjectOpt = typer.Option("default", "--project", "-p", help="Project (tenant) id.")


def client() -> ControlPlaneClient:
    return ControlPlaneClient(get_settings())


def fail(exc: Exception) -> None:
    body = exc.body if isinstance(exc, ApiError) else str(exc)
    err.print(f"[red]error:[/red] {json.dumps(body) if isinstance(body, dict) else body}")
    raise typer.Exit(1)


def print_json(data) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def call(method: str, path: str, **kwargs):
    """One REST call; an API error is printed and exits 1."""
    try:
        return client().call(method, path, **kwargs)
    except (ApiError, OSError) as exc:
        fail(exc)


ConfirmOpt = typer.Option("", "--confirm", help="The confirmation word the action needs.")


def when(ts: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts)) if ts else "-"


def show(rows: list[dict], columns: list[str], as_json: bool, single: bool = False) -> None:
    """Rows as JSON (--json) or as a table; `*_at` columns as local times."""
    if as_json:
        return print_json(rows[0] if single else rows)
    table = Table(*columns)
    for row in rows:
        table.add_row(*[when(row[c]) if c.endswith("_at") else str(row[c]) for c in columns])
    console.print(table)
