"""The control plane's REST API (`/api/v1/...`) as a Ray Serve deployment, with OpenAPI docs at /api/docs.

On start it migrates the database, creates the admin key on first start, records which built-in models
are served, and starts (or finds) the accounting actor, so a `serve deploy` of the YAML alone gives a
working platform.
"""

from __future__ import annotations

import logging
import os

import ray
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve
from sqlalchemy.exc import IntegrityError

from cluster import (accounting, endpoints, job_runner, keys, my_models, presets, projects, reconciler, services,
                     tuning_jobs, usage_api)
from cluster.db import Preset, ServedModel, migrate, now, session_scope
from cluster.deps import Admin, ProjectId, accounting_actor
from cluster.settings import get_settings
from serve_apps.catalog import BUILTIN_MODELS, CatalogModel, builtin
from serve_apps.errors import PlatformError

log = logging.getLogger("maas.control")

app = FastAPI(title="MaaS control plane", root_path="/api", docs_url="/docs", openapi_url="/openapi.json")


@app.exception_handler(PlatformError)
async def _platform_error(_request: Request, exc: PlatformError):
    return JSONResponse(status_code=exc.status, content=exc.body())


@app.exception_handler(IntegrityError)
async def _conflict(_request: Request, _exc: IntegrityError):
    # Two concurrent creates can both pass the checks; the database's unique constraint decides.
    reason = "The request conflicts with the current state (a name or id is already in use); retry."
    return JSONResponse(status_code=409, content=PlatformError("MaaS.0409", reason=reason).body())


@app.exception_handler(RequestValidationError)
async def _validation_error(_request: Request, exc: RequestValidationError):
    reason = "; ".join(f"{'.'.join(map(str, e['loc'][1:])) or 'body'}: {e['msg']}" for e in exc.errors())
    return JSONResponse(status_code=400, content=PlatformError("MaaS.0400", reason=reason).body())


router = APIRouter(prefix="/v1")


@router.get("/health")
async def health() -> dict:
    return {"status": "ok"}


@router.get("/models", response_model=list[CatalogModel])
async def catalog(_: Admin):
    return BUILTIN_MODELS


@router.post("/{project_id}/keys", status_code=201, response_model=keys.KeyCreated)
async def create_key(project_id: ProjectId, spec: keys.KeyCreate):
    with session_scope(get_settings().database_url) as session:
        created, key_hash = keys.create_key(session, project_id, spec)
        # The key works once the actor knows it; commit only after that so both agree.
        await accounting_actor().add_key.remote(key_hash, created.id, project_id)
    return created


@router.get("/{project_id}/keys", response_model=list[keys.KeyView])
async def list_keys(project_id: ProjectId):
    with session_scope(get_settings().database_url) as session:
        return keys.list_keys(session, project_id)


@router.delete("/{project_id}/keys/{key_id}", status_code=204)
async def delete_key(project_id: ProjectId, key_id: str):
    with session_scope(get_settings().database_url) as session:
        key_hash = keys.delete_key(session, project_id, key_id)
        # Revoke before the row goes: if the commit fails, the actor's reload brings the key back.
        await accounting_actor().revoke_key.remote(key_hash)


app.include_router(router)
app.include_router(projects.router)
app.include_router(presets.router)
app.include_router(endpoints.router)
app.include_router(my_models.router)
app.include_router(services.router)
app.include_router(services.mirror_router)
app.include_router(usage_api.router)
app.include_router(tuning_jobs.router)


def register_builtin_models(database_url: str, model_ids: list[str]) -> None:
    """Record which built-in models this platform serves (app name = model id)."""
    with session_scope(database_url) as session:
        for model_id in model_ids:
            card = builtin(model_id)
            row = session.get(ServedModel, model_id)
            created = row.created_at if row else now()
            payload = card.model_dump(mode="json") | {"created": created}
            if row is None:
                session.add(ServedModel(model_id=model_id, project_id=None, app_name=model_id,
                                        deployment_name=f"engine-{model_id}", card=payload, created_at=created))
                session.flush()
            else:
                row.card = payload
            if session.get(Preset, model_id) is None:  # offered free and unlimited until an admin says otherwise
                session.add(Preset(model_id=model_id, kind="free", rpm=presets.DEFAULT_RPM, tpm=presets.DEFAULT_TPM))


def prepare(model_ids: list[str]) -> str | None:
    """Migrate, make the admin key on first start, register models. Returns a newly generated admin key."""
    settings = get_settings()
    migrate(settings.database_url)
    with session_scope(settings.database_url) as session:
        secret = keys.ensure_admin_key(session, os.environ.get("MAAS_ADMIN_KEY"))
    register_builtin_models(settings.database_url, model_ids)
    return secret


@serve.deployment
@serve.ingress(app)
class ControlPlane:
    def __init__(self, model_ids: list[str]):
        secret = prepare(model_ids)
        if secret:
            log.warning("Generated the admin key (shown once): %s", secret)
        actor = accounting.get_or_create(get_settings().database_url)
        ray.get(actor.reload.remote())
        reconciler.start(get_settings().database_url)
        job_runner.start(get_settings().database_url, tuning_jobs.register_output)


def build_app(args: dict | None = None) -> serve.Application:
    """`serve deploy` entry point: `args.models` lists the built-in models the YAML also deploys."""
    model_ids = (args or {}).get("models", [m.id for m in BUILTIN_MODELS])
    return ControlPlane.options(ray_actor_options={"num_cpus": 0}).bind(model_ids)
