"""`maas keys create|list|delete`: API keys for the OpenAI-compatible API (the secret is shown once)."""

from __future__ import annotations

import time

import typer
from rich.table import Table

from cluster.cli.client import ApiError
from cluster.cli.common import JsonOpt, ProjectOpt, console
from cluster.cli.common import client as _client
from cluster.cli.common import fail as _fail
from cluster.cli.common import print_json as _print_json

keys_app = typer.Typer(help="API keys for the OpenAI-compatible API.", no_args_is_help=True)


@keys_app.command("create")
def keys_create(label: str = typer.Option(..., help="1-100 of A-Z a-z 0-9 _ -, unique."),
                description: str = typer.Option(None, help="1-100 characters (default: the label)."),
                project: str = ProjectOpt, as_json: bool = JsonOpt) -> None:
    """Create an API key. The secret is printed once and never stored."""
    try:
        created = _client().call("POST", f"/{project}/keys",
                                 json={"label": label, "description": description or label})
    except ApiError as exc:
        return _fail(exc)
    if as_json:
        return _print_json(created)
    console.print(f"API key [bold]{created['label']}[/bold] (id {created['id']}). Copy it now; it is not shown again:")
    console.print(created["key"], soft_wrap=True, highlight=False)


@keys_app.command("list")
def keys_list(project: str = ProjectOpt, as_json: bool = JsonOpt) -> None:
    try:
        rows = _client().call("GET", f"/{project}/keys")
    except ApiError as exc:
        return _fail(exc)
    if as_json:
        return _print_json(rows)
    table = Table("id", "label", "key", "description", "created")
    for row in rows:
        table.add_row(row["id"], row["label"], row["key_masked"], row["description"],
                      time.strftime("%Y-%m-%d %H:%M", time.localtime(row["created_at"])))
    console.print(table)


@keys_app.command("delete")
def keys_delete(key: str = typer.Argument(..., help="Key id or label."), project: str = ProjectOpt) -> None:
    """Delete a key; it stops working on the very next request."""
    try:
        _client().call("DELETE", f"/{project}/keys/{key}")
    except ApiError as exc:
        return _fail(exc)
    console.print(f"Deleted API key {key}.")
