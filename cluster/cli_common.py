"""What every `maas` sub-command shares: the REST client, JSON output, error printing, common options."""

from __future__ import annotations

import json
import sys

import typer
from rich.console import Console

from cluster.client import ApiError, ControlPlaneClient
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
