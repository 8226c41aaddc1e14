"""`maas`: run the platform and manage it. Every list/get/create takes --json (one JSON document only)."""

from __future__ import annotations


import typer
from rich.table import Column, Table

from cluster.cli.common import JsonOpt, console
from cluster.cli.common import fail as _fail
from cluster.cli.common import print_json as _print_json
from cluster.cli.compress import compress_app
from cluster.cli.datasets import datasets_app
from cluster.cli.endpoints import endpoints_app
from cluster.cli.finetune import finetune_app
from cluster.cli.keys import keys_app
from cluster.cli.models import models_app
from cluster.cli.presets import presets_app
from cluster.cli.projects import projects_app
from cluster.cli.services import services_app
from cluster.cli.usage import usage_app
from cluster.settings import get_settings

app = typer.Typer(help="Model-as-a-Service on Ray.", no_args_is_help=True, add_completion=False)
app.add_typer(keys_app, name="keys")
app.add_typer(models_app, name="models")
app.add_typer(projects_app, name="projects")
app.add_typer(endpoints_app, name="endpoints")
app.add_typer(presets_app, name="presets")
app.add_typer(usage_app, name="usage")
app.add_typer(finetune_app, name="finetune")
app.add_typer(datasets_app, name="datasets")
app.add_typer(compress_app, name="compress")
app.add_typer(services_app, name="services")
# -- platform lifecycle ----------------------------------------------------------------------------
@app.command()
def up(
    timeout: int = typer.Option(600, help="Seconds to wait for every model to answer."),
) -> None:
    """Start a local Ray head (or join RAY_ADDRESS), deploy the platform on Ray Serve, wait until every
    built-in model answers, print the URLs."""
    from cluster.cli import platform

    try:
        result = platform.up(console, timeout_s=timeout)
    except platform.StartupError as exc:
        _fail(exc)
    console.print()
    console.print(f"[bold green]MaaS is up[/bold green] in {result.seconds:.0f} s")
    console.print(f"  OpenAI API     {result.base_url}/v1")
    console.print(f"  Control plane  {result.base_url}/api/v1   (docs: {result.base_url}/api/docs)", soft_wrap=True)
    console.print(f"  Console        {result.base_url}/api/console/   (log in with an API key)", soft_wrap=True)
    console.print(f"  Ray dashboard  {result.dashboard_url}")
    console.print(f"  Models         {', '.join(result.models)}")
    if result.new_admin_key:
        console.print(f"  [bold]Admin key (shown once, also saved to {get_settings().credentials_file}):[/bold] "
                      f"{result.new_admin_key}", soft_wrap=True)  # one line, to copy
    console.print("Next: [bold]maas keys create --label demo[/bold], then call the API with the key.")


@app.command()
def join(address: str = typer.Argument(..., help="The head's GCS address, host:6379."),
         resources: str = typer.Option("", help='Custom resources of this node type, JSON: {"maas-gpu": 1}.'),
         num_cpus: int = typer.Option(None, help="Logical CPUs (default 16, as the head)."),
         num_gpus: int = typer.Option(None)) -> None:
    """Add this machine to the platform's Ray cluster as a worker node: engines and training workers may be
    placed on it. Needs the same MAAS_STORAGE mount, and the head's ~/.ray/auth_token with token auth."""
    from cluster.cli import platform

    try:
        platform.join(console, address, resources, num_cpus, num_gpus)
    except platform.StartupError as exc:
        _fail(exc)


@app.command()
def env() -> None:
    """Print the shell variables Ray's own commands need to reach this platform: `eval "$(.venv/bin/maas env)"`,
    then `ray job submit ...`, `serve deploy ...`, `serve status` work as written in the README."""
    import shlex

    from cluster.cli import platform

    variables = platform.shell_env()
    if variables["RAY_AUTH_MODE"] == "token":
        platform.ensure_ray_token()
    for name, value in variables.items():
        quoted = f'"{value}"' if name == "PATH" else shlex.quote(value)  # PATH keeps $PATH for the shell
        print(f"export {name}={quoted}")


@app.command()
def down(keep_ray: bool = typer.Option(False, help="Leave the Ray cluster running.")) -> None:
    """Stop the platform (its Serve applications and actor) and the Ray cluster `maas up` started."""
    from cluster.cli import platform

    platform.down(console, keep_ray=keep_ray)


@app.command()
def status(as_json: bool = JsonOpt) -> None:
    """Applications, deployments, replicas and health."""
    from cluster.cli import platform

    report = platform.status()
    if as_json:
        return _print_json(report)
    if not report["applications"]:
        console.print("MaaS is not running (no Serve applications).")
        raise typer.Exit(1)
    # names whole (a user copies them); the replica counts wrap instead
    table = Table(Column("application", no_wrap=True), "status", Column("deployment", no_wrap=True), "replicas",
                  "health")
    for name, application in report["applications"].items():
        for dep_name, dep in application["deployments"].items():
            replicas = ", ".join(f"{n} {s.lower()}" for s, n in dep["replicas"].items()) or "-"
            table.add_row(name, application["status"], dep_name, replicas, dep["status"])
    console.print(table)


if __name__ == "__main__":
    app()
