"""`maas datasets`: a project's dataset uploads (`maas finetune create --dataset FILE` uploads one)."""

from __future__ import annotations

import typer

from cluster.cli.common import ConfirmOpt, JsonOpt, ProjectOpt, call, console, show

datasets_app = typer.Typer(help="Dataset uploads: list, delete (unused ones expire by themselves).",
                           no_args_is_help=True)
DATASET_COLUMNS = ["id", "name", "bytes", "created_at", "last_used_at", "expires_at", "used_by"]


@datasets_app.command("list")
def datasets_list(project: str = ProjectOpt, as_json: bool = JsonOpt) -> None:
    show(call("GET", f"/{project}/datasets"), DATASET_COLUMNS, as_json)


@datasets_app.command("delete")
def datasets_delete(dataset_id: str, project: str = ProjectOpt, confirm: str = ConfirmOpt) -> None:
    """Delete an upload no job may still read. Needs --confirm DELETE."""
    call("DELETE", f"/{project}/datasets/{dataset_id}", params={"confirm": confirm})
    console.print(f"Deleted dataset {dataset_id}.")
