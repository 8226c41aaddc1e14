"""`maas`: run the platform and manage it. Every list/get/create takes --json (one JSON document only)."""

from __future__ import annotations

import time

import typer
from rich.table import Table

from cluster.cli_models import register_my_model_commands
from cluster.cli_common import JsonOpt, ProjectOpt, console
from cluster.cli_common import client as _client
from cluster.cli_common import fail as _fail
from cluster.cli_common import print_json as _print_json
from cluster.cli_services import services_app
from cluster.cli_finetune import finetune_app
from cluster.cli_tenancy import endpoints_app, presets_app, projects_app
from cluster.client import ApiError
from cluster.usage_cli import usage_app
from cluster.settings import get_settings

app = typer.Typer(help="Model-as-a-Service on Ray.", no_args_is_help=True, add_completion=False)
keys_app = typer.Typer(help="API keys for the OpenAI-compatible API.", no_args_is_help=True)
models_app = typer.Typer(help="The model catalog.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(models_app, name="models")
register_my_model_commands(models_app)
app.add_typer(projects_app, name="projects")
app.add_typer(endpoints_app, name="endpoints")
app.add_typer(presets_app, name="presets")
app.add_typer(usage_app, name="usage")
app.add_typer(finetune_app, name="finetune")
app.add_typer(services_app, name="services")
# -- platform lifecycle ----------------------------------------------------------------------------
@app.command()
def up(
    timeout: int = typer.Option(600, help="Seconds to wait for every model to answer."),
) -> None:
    """Start a local Ray head (or join RAY_ADDRESS), deploy the platform on Ray Serve, wait until every
    built-in model answers, print the URLs."""
    from cluster import platform

    try:
        result = platform.up(console, timeout_s=timeout)
    except platform.StartupError as exc:
        _fail(exc)
    console.print()
    console.print(f"[bold green]MaaS is up[/bold green] in {result.seconds:.0f} s")
    console.print(f"  OpenAI API     {result.base_url}/v1")
    console.print(f"  Control plane  {result.base_url}/api/v1   (docs: {result.base_url}/api/docs)", soft_wrap=True)
    console.print(f"  Ray dashboard  {result.dashboard_url}")
    console.print(f"  Models         {', '.join(result.models)}")
    if result.new_admin_key:
        console.print(f"  [bold]Admin key (shown once, also saved to {get_settings().credentials_file}):[/bold] "
                      f"{result.new_admin_key}", soft_wrap=True)  # one line, to copy
    console.print("Next: [bold]maas keys create --label demo[/bold], then call the API with the key.")


@app.command()
def down(keep_ray: bool = typer.Option(False, help="Leave the Ray cluster running.")) -> None:
    """Stop the platform (its Serve applications and actor) and the Ray cluster `maas up` started."""
    from cluster import platform

    platform.down(console, keep_ray=keep_ray)


@app.command()
def status(as_json: bool = JsonOpt) -> None:
    """Applications, deployments, replicas and health."""
    from cluster import platform

    report = platform.status()
    if as_json:
        return _print_json(report)
    if not report["applications"]:
        console.print("MaaS is not running (no Serve applications).")
        raise typer.Exit(1)
    table = Table("application", "status", "deployment", "replicas", "deployment status")
    for name, application in report["applications"].items():
        for dep_name, dep in application["deployments"].items():
            replicas = ", ".join(f"{n} {s.lower()}" for s, n in dep["replicas"].items()) or "-"
            table.add_row(name, application["status"], dep_name, replicas, dep["status"])
    console.print(table)


# -- keys ------------------------------------------------------------------------------------------
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


# -- models ----------------------------------------------------------------------------------------
@models_app.command("list")
def models_list(as_json: bool = JsonOpt) -> None:
    """The catalog: type, context length, capabilities, supported jobs."""
    try:
        rows = _client().call("GET", "/models")
    except ApiError as exc:
        return _fail(exc)
    if as_json:
        return _print_json(rows)
    table = Table("model", "type", "context", "capabilities", "jobs")
    for row in rows:
        table.add_row(row["id"], ", ".join(row["types"]), str(row["context_length"]),
                      ", ".join(row["capabilities"]) or "-", ", ".join(row["supported_jobs"]))
    console.print(table)


@models_app.command("build")
def models_build(force: bool = typer.Option(False, help="Rebuild even if present.")) -> None:
    """Build the built-in models the project makes itself (tiny-chat) into $MAAS_HOME/models."""
    from serve_apps import tiny_chat

    path = get_settings().models_dir / "tiny-chat"
    if tiny_chat.is_built(path) and not force:
        console.print(f"tiny-chat is built: {path}")
        return
    with console.status("Building tiny-chat (tokenizer, weights, a short training run)..."):
        start = time.time()
        tiny_chat.build(path)
    console.print(f"Built tiny-chat in {time.time() - start:.0f} s: {path}")


if __name__ == "__main__":
    app()
