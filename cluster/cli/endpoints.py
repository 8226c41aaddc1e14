"""`maas endpoints`: custom endpoints, with their own name, RPM and TPM, in front of a service."""

from __future__ import annotations

import typer

from cluster.cli.common import ConfirmOpt, JsonOpt, ProjectOpt, call, console, show

endpoints_app = typer.Typer(help="Custom endpoints: own name, RPM and TPM in front of a service.",
                            no_args_is_help=True)


ENDPOINT_COLUMNS = ["id", "name", "service", "rpm", "tpm", "status", "description", "created_at"]


@endpoints_app.command("create")
def endpoints_create(name: str, service: str = typer.Option(..., "--service", help="Preset model or service."),
                     rpm: int = typer.Option(None, help="Requests per minute (default: the model's limit)."),
                     tpm: int = typer.Option(None, help="Tokens per minute (default: the model's limit)."),
                     description: str = typer.Option("", help="Up to 256 characters."),
                     project: str = ProjectOpt, as_json: bool = JsonOpt) -> None:
    body = {"name": name, "service": service, "description": description, "rpm": rpm, "tpm": tpm}
    show([call("POST", f"/{project}/endpoints", json=body)], ENDPOINT_COLUMNS, as_json, single=True)


@endpoints_app.command("list")
def endpoints_list(project: str = ProjectOpt, as_json: bool = JsonOpt) -> None:
    show(call("GET", f"/{project}/endpoints"), ENDPOINT_COLUMNS, as_json)


@endpoints_app.command("get")
def endpoints_get(endpoint: str, project: str = ProjectOpt, as_json: bool = JsonOpt) -> None:
    show([call("GET", f"/{project}/endpoints/{endpoint}")], ENDPOINT_COLUMNS, as_json, single=True)


@endpoints_app.command("update")
def endpoints_update(endpoint: str, rpm: int = typer.Option(None), tpm: int = typer.Option(None),
                     description: str = typer.Option(None), project: str = ProjectOpt,
                     as_json: bool = JsonOpt) -> None:
    """Change the description or the limits (they apply to the next request); the service never changes."""
    body = {k: v for k, v in {"rpm": rpm, "tpm": tpm, "description": description}.items() if v is not None}
    show([call("PATCH", f"/{project}/endpoints/{endpoint}", json=body)], ENDPOINT_COLUMNS, as_json, single=True)


@endpoints_app.command("disable")
def endpoints_disable(endpoint: str, confirm: str = ConfirmOpt, project: str = ProjectOpt,
                      as_json: bool = JsonOpt) -> None:
    """Stop answering calls to the endpoint. Needs --confirm YES."""
    show([call("POST", f"/{project}/endpoints/{endpoint}/disable", json={"confirm": confirm})], ENDPOINT_COLUMNS,
          as_json, single=True)


@endpoints_app.command("enable")
def endpoints_enable(endpoint: str, project: str = ProjectOpt, as_json: bool = JsonOpt) -> None:
    show([call("POST", f"/{project}/endpoints/{endpoint}/enable")], ENDPOINT_COLUMNS, as_json, single=True)


@endpoints_app.command("delete")
def endpoints_delete(endpoint: str, confirm: str = ConfirmOpt, project: str = ProjectOpt) -> None:
    """Delete for good (the name cannot be used again). Needs --confirm DELETE."""
    call("DELETE", f"/{project}/endpoints/{endpoint}", params={"confirm": confirm})
    console.print(f"Deleted endpoint {endpoint}.")
