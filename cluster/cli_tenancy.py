"""`maas projects|endpoints|presets`: tenants, custom endpoints and the preset services they may call."""

from __future__ import annotations

import time

import typer
from rich.table import Table

from cluster.cli_common import JsonOpt, ProjectOpt, call, console, print_json

projects_app = typer.Typer(help="Projects (tenants). Admin key required.", no_args_is_help=True)
endpoints_app = typer.Typer(help="Custom endpoints: own name, RPM and TPM in front of a service.",
                            no_args_is_help=True)
presets_app = typer.Typer(help="Preset services: free or commercial offers of the platform's models.",
                          no_args_is_help=True)
ConfirmOpt = typer.Option("", "--confirm", help="The confirmation word the action needs.")


def _when(ts: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts)) if ts else "-"


def _show(rows: list[dict], columns: list[str], as_json: bool, single: bool = False) -> None:
    if as_json:
        return print_json(rows[0] if single else rows)
    table = Table(*columns)
    for row in rows:
        table.add_row(*[_when(row[c]) if c.endswith("_at") else str(row[c]) for c in columns])
    console.print(table)


# -- projects ----------------------------------------------------------------------------------------
@projects_app.command("create")
def projects_create(project_id: str, name: str = typer.Option("", help="Display name."),
                    as_json: bool = JsonOpt) -> None:
    _show([call("POST", "/projects", json={"id": project_id, "name": name})], ["id", "name", "created_at"],
          as_json, single=True)


@projects_app.command("list")
def projects_list(as_json: bool = JsonOpt) -> None:
    _show(call("GET", "/projects"), ["id", "name", "created_at"], as_json)


@projects_app.command("delete")
def projects_delete(project_id: str, confirm: str = ConfirmOpt) -> None:
    """Delete an empty project (no keys, services or endpoints left). Needs --confirm DELETE."""
    call("DELETE", f"/projects/{project_id}", params={"confirm": confirm})
    console.print(f"Deleted project {project_id}.")


# -- endpoints ---------------------------------------------------------------------------------------
ENDPOINT_COLUMNS = ["id", "name", "service", "rpm", "tpm", "status", "description", "created_at"]


@endpoints_app.command("create")
def endpoints_create(name: str, service: str = typer.Option(..., "--service", help="Preset model or service."),
                     rpm: int = typer.Option(None, help="Requests per minute (default: the model's limit)."),
                     tpm: int = typer.Option(None, help="Tokens per minute (default: the model's limit)."),
                     description: str = typer.Option("", help="Up to 256 characters."),
                     project: str = ProjectOpt, as_json: bool = JsonOpt) -> None:
    body = {"name": name, "service": service, "description": description, "rpm": rpm, "tpm": tpm}
    _show([call("POST", f"/{project}/endpoints", json=body)], ENDPOINT_COLUMNS, as_json, single=True)


@endpoints_app.command("list")
def endpoints_list(project: str = ProjectOpt, as_json: bool = JsonOpt) -> None:
    _show(call("GET", f"/{project}/endpoints"), ENDPOINT_COLUMNS, as_json)


@endpoints_app.command("get")
def endpoints_get(endpoint: str, project: str = ProjectOpt, as_json: bool = JsonOpt) -> None:
    _show([call("GET", f"/{project}/endpoints/{endpoint}")], ENDPOINT_COLUMNS, as_json, single=True)


@endpoints_app.command("update")
def endpoints_update(endpoint: str, rpm: int = typer.Option(None), tpm: int = typer.Option(None),
                     description: str = typer.Option(None), project: str = ProjectOpt,
                     as_json: bool = JsonOpt) -> None:
    """Change the description or the limits (they apply to the next request); the service never changes."""
    body = {k: v for k, v in {"rpm": rpm, "tpm": tpm, "description": description}.items() if v is not None}
    _show([call("PATCH", f"/{project}/endpoints/{endpoint}", json=body)], ENDPOINT_COLUMNS, as_json, single=True)


@endpoints_app.command("disable")
def endpoints_disable(endpoint: str, confirm: str = ConfirmOpt, project: str = ProjectOpt,
                      as_json: bool = JsonOpt) -> None:
    """Stop answering calls to the endpoint. Needs --confirm YES."""
    _show([call("POST", f"/{project}/endpoints/{endpoint}/disable", json={"confirm": confirm})], ENDPOINT_COLUMNS,
          as_json, single=True)


@endpoints_app.command("enable")
def endpoints_enable(endpoint: str, project: str = ProjectOpt, as_json: bool = JsonOpt) -> None:
    _show([call("POST", f"/{project}/endpoints/{endpoint}/enable")], ENDPOINT_COLUMNS, as_json, single=True)


@endpoints_app.command("delete")
def endpoints_delete(endpoint: str, confirm: str = ConfirmOpt, project: str = ProjectOpt) -> None:
    """Delete for good (the name cannot be used again). Needs --confirm DELETE."""
    call("DELETE", f"/{project}/endpoints/{endpoint}", params={"confirm": confirm})
    console.print(f"Deleted endpoint {endpoint}.")


# -- presets -----------------------------------------------------------------------------------------
PRESET_COLUMNS = ["model_id", "kind", "rpm", "tpm", "expires_at", "free_quota_tokens"]


@presets_app.command("list")
def presets_list(project: str = ProjectOpt, as_json: bool = JsonOpt) -> None:
    """The presets and this project's standing (activated/claimed, frozen)."""
    _show(call("GET", f"/{project}/presets"), PRESET_COLUMNS + ["activated", "frozen"], as_json)


@presets_app.command("set")
def presets_set(model: str, kind: str = typer.Option(..., help="free or commercial"),
                rpm: int = typer.Option(None), tpm: int = typer.Option(None),
                expires_at: int = typer.Option(None, help="Free mode 1: epoch seconds."),
                free_quota_tokens: int = typer.Option(None, help="Free mode 2: claimable tokens."),
                as_json: bool = JsonOpt) -> None:
    """(Admin) How a served model is offered."""
    body = {k: v for k, v in {"kind": kind, "rpm": rpm, "tpm": tpm, "expires_at": expires_at,
                              "free_quota_tokens": free_quota_tokens}.items() if v is not None}
    _show([call("PUT", f"/presets/{model}", json=body)], ["model_id", *PRESET_COLUMNS[1:]], as_json, single=True)


@presets_app.command("activate")
def presets_activate(models: list[str] = typer.Argument(None, help="Default: every commercial preset."),
                     project: str = ProjectOpt, as_json: bool = JsonOpt) -> None:
    """Activate commercial presets for the project (permanent)."""
    rows = call("POST", f"/{project}/presets/activate", json={"models": models or None})
    _show(rows, PRESET_COLUMNS + ["activated", "frozen"], as_json)


@presets_app.command("claim")
def presets_claim(model: str, project: str = ProjectOpt, as_json: bool = JsonOpt) -> None:
    """Claim a free preset's token quota."""
    _show([call("POST", f"/{project}/presets/{model}/claim")], PRESET_COLUMNS + ["activated", "frozen"], as_json,
          single=True)


@presets_app.command("freeze")
def presets_freeze(model: str, project: str = ProjectOpt,
                   unfreeze: bool = typer.Option(False, help="Lift the freeze instead.")) -> None:
    """(Admin) Freeze a project's use of a preset (arrears), or lift it."""
    call("POST", f"/presets/{model}/freeze", json={"project_id": project, "frozen": not unfreeze})
    console.print(f"{model} is {'unfrozen' if unfreeze else 'frozen'} for project {project}.")
