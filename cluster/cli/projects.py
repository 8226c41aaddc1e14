"""`maas projects`: tenants (admin key required)."""

from __future__ import annotations

import typer

from cluster.cli.common import ConfirmOpt, JsonOpt, call, console, show

projects_app = typer.Typer(help="Projects (tenants). Admin key required.", no_args_is_help=True)


@projects_app.command("create")
def projects_create(project_id: str, name: str = typer.Option("", help="Display name."),
                    as_json: bool = JsonOpt) -> None:
    show([call("POST", "/projects", json={"id": project_id, "name": name})], ["id", "name", "created_at"],
          as_json, single=True)


@projects_app.command("list")
def projects_list(as_json: bool = JsonOpt) -> None:
    show(call("GET", "/projects"), ["id", "name", "created_at"], as_json)


@projects_app.command("delete")
def projects_delete(project_id: str, confirm: str = ConfirmOpt) -> None:
    """Delete an empty project (no keys, services or endpoints left). Needs --confirm DELETE."""
    call("DELETE", f"/projects/{project_id}", params={"confirm": confirm})
    console.print(f"Deleted project {project_id}.")
