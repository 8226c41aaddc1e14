"""The control plane's REST API (`/api/v1/...`) as a Ray Serve deployment, with OpenAPI docs at /api/docs:
the FastAPI app, its error handlers, and every room's router mounted.

On start it migrates the database, creates the admin key on first start, records which built-in models
are served, starts (or finds) the accounting actor and the background threads (service reconciler, job
sync, dataset expiry), so a `serve deploy` of the YAML alone gives a working platform.
"""

from __future__ import annotations

import logging

import ray
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve
from sqlalchemy.exc import IntegrityError

from cluster import auth
from cluster.accounting import actor as accounting
from cluster.console.app import console
from cluster.deps import Admin, is_admin_request
from cluster.compression import service as compression
from cluster.compression.router import router as compression_router
from cluster.datasets import service as datasets
from cluster.datasets.router import router as datasets_router
from cluster.endpoints.router import router as endpoints_router
from cluster.finetune.router import router as finetune_router
from cluster.finetune import service as finetune
from cluster.guard import BodyLimit, CallerGuard
from cluster.keys.router import router as keys_router
from cluster.my_models.router import router as my_models_router
from cluster.presets.router import router as presets_router
from cluster.presets.service import register_builtin_models
from cluster.projects.router import router as projects_router
from cluster.runtime import jobs, nodes
from cluster.runtime.health import report as health_report
from cluster.services import reconciler
from cluster.services.router import mirror_router as services_mirror_router
from cluster.services.router import router as services_router
from cluster.settings import get_settings
from cluster.state.db import CompressionJob, TuningJob, migrate, session_scope
from cluster.usage.router import router as usage_router
from serve_apps.catalog import BUILTIN_MODELS, CatalogModel
from serve_apps.errors import PlatformError
from serve_apps.ray_compat import bind_serve_grpc_to_node_ip

log = logging.getLogger("maas.control")

app = FastAPI(title="MaaS control plane", root_path="/api", docs_url="/docs", openapi_url="/openapi.json")
app.add_middleware(BodyLimit)
app.add_middleware(CallerGuard, app=app)  # outermost: the key is checked before any body is read


@app.exception_handler(PlatformError)
async def platform_error(_request: Request, exc: PlatformError):
    return JSONResponse(status_code=exc.status, content=exc.body())


@app.exception_handler(IntegrityError)
async def conflict(_request: Request, _exc: IntegrityError):
    # Two concurrent creates can both pass the checks; the database's unique constraint decides.
    reason = "The request conflicts with the current state (a name or id is already in use); retry."
    return JSONResponse(status_code=409, content=PlatformError("MaaS.0409", reason=reason).body())


@app.exception_handler(RequestValidationError)
async def validation_error(_request: Request, exc: RequestValidationError):
    reason = "; ".join(f"{'.'.join(map(str, e['loc'][1:])) or 'body'}: {e['msg']}" for e in exc.errors())
    return JSONResponse(status_code=400, content=PlatformError("MaaS.0400", reason=reason).body())


router = APIRouter(prefix="/v1")


@router.get("/health")
def health(request: Request) -> dict:
    """Up, and how each background loop is doing; the text of a loop's last error only for the admin key."""
    loops = health_report()
    if not is_admin_request(request):
        loops = {name: {k: v for k, v in view.items() if k != "last_error"} for name, view in loops.items()}
    return {"status": "ok", "loops": loops}


@router.get("/models", response_model=list[CatalogModel])
async def catalog(_: Admin):
    return BUILTIN_MODELS


for mounted in (router, keys_router, projects_router, presets_router, endpoints_router, my_models_router,
                services_router, services_mirror_router, usage_router, datasets_router, finetune_router,
                compression_router):
    app.include_router(mounted)
app.mount("/console", console)  # the web console: /api/console/ behind Serve (cluster/console)


def prepare(model_ids: list[str]) -> str | None:
    """Migrate, make the admin key on first start, register models. Returns a newly generated admin key."""
    settings = get_settings()
    migrate(settings.database_url)
    with session_scope(settings.database_url) as session:
        secret = auth.ensure_admin_key(session, settings.admin_key)
    with session_scope(settings.database_url) as session:
        register_builtin_models(session, model_ids)
    return secret


@serve.deployment
@serve.ingress(app)
class ControlPlane:
    def __init__(self, model_ids: list[str]):
        bind_serve_grpc_to_node_ip()  # this replica's inter-deployment gRPC port on the node's IP only
        nodes.check_database(get_settings().database_url, nodes.alive_nodes())
        secret = prepare(model_ids)
        if secret:  # a `serve deploy` without `maas up`: the key goes to the credentials file, never to a log
            auth.save_credentials(get_settings().credentials_file, secret)
            log.warning("Generated the admin key; it is in %s (mode 0600)", get_settings().credentials_file)
        shards = accounting.get_or_create(get_settings().database_url, get_settings().accounting_shards,
                                          get_settings().usage_retention_days)
        ray.get([shard.reload.remote() for shard in shards])
        reconciler.start(get_settings().database_url)
        jobs.start(get_settings().database_url, {TuningJob: finetune.register_output,
                                                 CompressionJob: compression.register_output})
        datasets.start_expiry(get_settings().database_url)


def build_app(args: dict | None = None) -> serve.Application:
    """`serve deploy` entry point: `args.models` lists the built-in models the YAML also deploys."""
    model_ids = (args or {}).get("models", [m.id for m in BUILTIN_MODELS])
    return ControlPlane.options(ray_actor_options={"num_cpus": 0}).bind(model_ids)
