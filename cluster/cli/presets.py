"""`maas presets`: the preset services and a project's standing with them."""

from __future__ import annotations

import typer

from cluster.cli.common import JsonOpt, ProjectOpt, call, console, show

presets_app = typer.Typer(help="Preset services: free or commercial offers of the platform's models.",
                          no_args_is_help=True)


PRESET_COLUMNS = ["model_id", "kind", "rpm", "tpm", "expires_at", "free_quota_tokens"]


@presets_app.command("list")
def presets_list(project: str = ProjectOpt, as_json: bool = JsonOpt) -> None:
    """The presets and this project's standing (activated/claimed, frozen)."""
    show(call("GET", f"/{project}/presets"), PRESET_COLUMNS + ["activated", "frozen"], as_json)


@presets_app.command("set")
def presets_set(model: str, kind: str = typer.Option(..., help="free or commercial"),
                rpm: int = typer.Option(None), tpm: int = typer.Option(None),
                expires_at: int = typer.Option(None, help="Free mode 1: epoch seconds."),
                free_quota_tokens: int = typer.Option(None, help="Free mode 2: claimable tokens."),
                as_json: bool = JsonOpt) -> None:
    """(Admin) How a served model is offered."""
    body = {k: v for k, v in {"kind": kind, "rpm": rpm, "tpm": tpm, "expires_at": expires_at,
                              "free_quota_tokens": free_quota_tokens}.items() if v is not None}
    show([call("PUT", f"/presets/{model}", json=body)], ["model_id", *PRESET_COLUMNS[1:]], as_json, single=True)


@presets_app.command("activate")
def presets_activate(models: list[str] = typer.Argument(None, help="Default: every commercial preset."),
                     project: str = ProjectOpt, as_json: bool = JsonOpt) -> None:
    """Activate commercial presets for the project (permanent)."""
    rows = call("POST", f"/{project}/presets/activate", json={"models": models or None})
    show(rows, PRESET_COLUMNS + ["activated", "frozen"], as_json)


@presets_app.command("claim")
def presets_claim(model: str, project: str = ProjectOpt, as_json: bool = JsonOpt) -> None:
    """Claim a free preset's token quota."""
    show([call("POST", f"/{project}/presets/{model}/claim")], PRESET_COLUMNS + ["activated", "frozen"], as_json,
          single=True)


@presets_app.command("freeze")
def presets_freeze(model: str, project: str = ProjectOpt,
                   unfreeze: bool = typer.Option(False, help="Lift the freeze instead.")) -> None:
    """(Admin) Freeze a project's use of a preset (arrears), or lift it."""
    call("POST", f"/presets/{model}/freeze", json={"project_id": project, "frozen": not unfreeze})
    console.print(f"{model} is {'unfrozen' if unfreeze else 'frozen'} for project {project}.")
