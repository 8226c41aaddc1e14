"""`maas models`: the catalog (`list`, `build` the built-in models) and the project's own models
(`create|mine|get|versions|add-version|delete|delete-version`, spec §6.1)."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import typer
from rich.table import Table

from cluster.cli.client import ApiError
from cluster.cli.common import JsonOpt, ProjectOpt, call, console, print_json
from cluster.cli.common import client as _client
from cluster.cli.common import fail as _fail
from cluster.cli.common import print_json as _print_json
from cluster.settings import get_settings

ConfirmOpt = typer.Option("", "--confirm", help="The confirmation word: DELETE.")
DescriptionOpt = typer.Option("", "--description", help="Up to 100 characters.")
PathOpt = typer.Option(..., "--path", help="A Hugging Face-format folder (weights, tokenizer, config.json; or a "
                                           "LoRA adapter with adapter_config.json). It is copied.")
VERSION_COLUMNS = ["version", "kind", "status", "source", "description", "created_at", "path"]


models_app = typer.Typer(help="The model catalog.", no_args_is_help=True)


def _when(ts: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


def _versions_table(rows: list[dict]) -> Table:
    table = Table(*VERSION_COLUMNS)
    for row in rows:
        table.add_row(*[_when(row[c]) if c == "created_at" else str(row[c]) for c in VERSION_COLUMNS])
    return table


def _show_model(model: dict) -> None:
    console.print(f"[bold]{model['name']}[/bold]  id {model['id']}  base {model['base_model']}  "
                  f"created {_when(model['created_at'])}")
    if model["description"]:
        console.print(model["description"])
    console.print(_versions_table(model["versions"]))


def _copying(as_json: bool, path: str):
    """The create step (check the folder, copy the weights) as a spinner, unless the output is JSON."""
    return contextlib.nullcontext() if as_json else console.status(f"Checking {path} and copying its weights...")


def register_my_model_commands(models_app: typer.Typer) -> None:
    """Add the my-model commands to `maas models`."""

    @models_app.command("create")
    def create(name: str = typer.Argument(..., help="1-64 characters: a letter (CJK included) first; letters, "
                                                    "digits, _ - ."),
               base: str = typer.Option(..., "--base", help="The base catalog model."),
               path: str = PathOpt, description: str = DescriptionOpt, project: str = ProjectOpt,
               as_json: bool = JsonOpt) -> None:
        """Create a model (and its version 1) from a base catalog model and a folder of weights."""
        folder = str(Path(path).expanduser().resolve())
        with _copying(as_json, folder):
            model = call("POST", f"/{project}/my-models", json={"name": name, "description": description,
                                                                  "base_model": base, "path": folder})
        if as_json:
            return print_json(model)
        _show_model(model)

    @models_app.command("mine")
    def mine(project: str = ProjectOpt, as_json: bool = JsonOpt) -> None:
        """The project's own models (`maas models list` is the catalog)."""
        models = call("GET", f"/{project}/my-models")
        if as_json:
            return print_json(models)
        table = Table("id", "name", "base", "versions", "description", "created_at")
        for m in models:
            table.add_row(m["id"], m["name"], m["base_model"], ", ".join(str(v["version"]) for v in m["versions"]),
                          m["description"], _when(m["created_at"]))
        console.print(table)

    @models_app.command("get")
    def get(model: str = typer.Argument(..., help="Model name or id."), project: str = ProjectOpt,
            as_json: bool = JsonOpt) -> None:
        """A model and its versions."""
        found = call("GET", f"/{project}/my-models/{model}")
        if as_json:
            return print_json(found)
        _show_model(found)

    @models_app.command("versions")
    def versions(model: str = typer.Argument(..., help="Model name or id."), project: str = ProjectOpt,
                 as_json: bool = JsonOpt) -> None:
        """A model's versions: number, kind (full or LoRA), status, source, where the weights live."""
        rows = call("GET", f"/{project}/my-models/{model}/versions")
        if as_json:
            return print_json(rows)
        console.print(_versions_table(rows))

    @models_app.command("add-version")
    def add_version(model: str = typer.Argument(..., help="Model name or id."), path: str = PathOpt,
                    description: str = DescriptionOpt, project: str = ProjectOpt, as_json: bool = JsonOpt) -> None:
        """Add the next version (numbered automatically; at most 10 per model)."""
        folder = str(Path(path).expanduser().resolve())
        with _copying(as_json, folder):
            row = call("POST", f"/{project}/my-models/{model}/versions",
                       json={"description": description, "path": folder})
        if as_json:
            return print_json(row)
        console.print(f"Added version {row['version']} of {model}.")
        console.print(_versions_table([row]))

    @models_app.command("delete")
    def delete(model: str = typer.Argument(..., help="Model name or id."), confirm: str = ConfirmOpt,
               project: str = ProjectOpt) -> None:
        """Delete a model and its weights; refused while a service or job uses any version. Needs --confirm
        DELETE."""
        call("DELETE", f"/{project}/my-models/{model}", params={"confirm": confirm})
        console.print(f"Deleted model {model}.")

    @models_app.command("delete-version")
    def delete_version(model: str = typer.Argument(..., help="Model name or id."),
                       version: str = typer.Argument(..., help="Version number."), confirm: str = ConfirmOpt,
                       project: str = ProjectOpt) -> None:
        """Delete one version; refused while a service or job uses it. Needs --confirm DELETE."""
        call("DELETE", f"/{project}/my-models/{model}/versions/{version}", params={"confirm": confirm})
        console.print(f"Deleted version {version} of model {model}.")


register_my_model_commands(models_app)


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
