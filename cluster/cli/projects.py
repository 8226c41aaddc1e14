"""`maas projects`: tenants (admin key required)."""

from __future__ import annotations

import typer

from cluster.cli.common import ConfirmOpt, JsonOpt, call, console, print_json, show

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


QUOTA_COLUMNS = ["project_id", "services", "instances", "workers", "models", "batch_size", "seq_len", "model_disk_mb",
                 "jobs", "storage_mb", "datasets", "overrides"]


@projects_app.command("quotas")
def projects_quotas(project_id: str,
                    services: int = typer.Option(None, help="Model services."),
                    instances: int = typer.Option(None, help="Engine instances over the running services."),
                    workers: int = typer.Option(None, help="Ray Train workers of one job."),
                    models: int = typer.Option(None, help="My models."),
                    batch_size: int = typer.Option(None, help="A job's global batch size."),
                    seq_len: int = typer.Option(None, help="A job's sequence length."),
                    model_disk_mb: int = typer.Option(None, help="MiB of my models' weights, all versions."),
                    jobs: int = typer.Option(None, help="Active tuning and compression jobs together."),
                    storage_mb: int = typer.Option(None, help="MiB of dataset uploads, job outputs and model "
                                                              "versions together."),
                    datasets: int = typer.Option(None, help="Dataset uploads kept."),
                    reset: bool = typer.Option(False, help="Back to the platform's defaults."),
                    as_json: bool = JsonOpt) -> None:
    """Show a project's quotas; with options (admin), set them (the ones not given stay as they are)."""
    given = {"services": services, "instances": instances, "workers": workers, "models": models,
             "batch_size": batch_size, "seq_len": seq_len, "model_disk_mb": model_disk_mb, "jobs": jobs,
             "storage_mb": storage_mb, "datasets": datasets}
    current = call("GET", f"/projects/{project_id}/quotas")
    if reset or any(v is not None for v in given.values()):
        kept = {} if reset else {k: current[k] for k in current["overrides"]}
        current = call("PUT", f"/projects/{project_id}/quotas",
                       json=kept | {k: v for k, v in given.items() if v is not None})
    if as_json:
        return print_json(current)
    show([current | {"overrides": ", ".join(current["overrides"]) or "-"}], QUOTA_COLUMNS, False, single=True)
