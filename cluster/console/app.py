"""The web console (spec §4-§9 in a browser), mounted by `cluster.app` at `/console` under the control plane's
`/api` prefix. Server-side rendered Jinja2 pages with htmx and Chart.js vendored under `static/`.

Every page is a thin view: it calls the same route functions the REST API mounts (the rooms' `router.py`,
which call their `service.py` and make the same after-commit side effects: accounting reloads, reconciler
wake-ups, job submission), so a rule exists once. Failures show the platform's own message.
"""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from cluster import auth
from cluster.accounting.routes import CALLABLE_STATUSES
from cluster.console import admin_pages, compression_pages, models_pages
from cluster.console import schemas as console_schemas
from cluster.console.pages import (HERE, LoginNeeded, Refused, access, admin_only, base, check_csrf, go, page,
                                   posted, reason, sessions, status_of, templates, viewer_of)
from cluster.console.session import COOKIE, LOGIN_COOKIE, MAX_AGE_S, Viewer, same
from cluster.datasets import router as datasets_router
from cluster.endpoints import router as endpoints_router
from cluster.endpoints.schemas import Confirm as EndpointConfirm
from cluster.endpoints.schemas import EndpointCreate
from cluster.finetune import router as finetune_router
from cluster.finetune.schemas import JobCreate, Promote
from cluster.keys import router as keys_router
from cluster.keys.schemas import KeyCreate
from cluster.my_models import router as my_models_router
from cluster.presets import router as presets_router
from cluster.presets.schemas import ActivateSpec
from cluster.projects import router as projects_router
from cluster.projects.schemas import ProjectCreate, QuotaSpec
from cluster.schemas import confirmation
from cluster.services import router as services_router
from cluster.services.schemas import QpsRequest, ScaleRequest, ServiceCreate, UpgradeRequest
from cluster.settings import get_settings
from cluster.state.db import ApiKey, Service, session_scope
from cluster.usage import router as usage_router
from cluster.usage.schemas import UsageFilter
from serve_apps.catalog import BUILTIN_MODELS, builtin
from serve_apps.errors import PlatformError

log = logging.getLogger("maas.console")
console = FastAPI(title="MaaS console", docs_url=None, redoc_url=None, openapi_url=None)
console.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
ROW_ERROR = re.compile(r"^\s*line (\d+), ([^:]+): (.*)$")
for pages in (compression_pages, models_pages, admin_pages):
    console.include_router(pages.router)


# -- errors: the console's own pages, never a stack trace -------------------------------------------------
@console.exception_handler(LoginNeeded)
async def _login_needed(request: Request, _exc: LoginNeeded):
    if request.headers.get("hx-request"):
        return Response(status_code=401, headers={"HX-Redirect": base(request) + "/login"})
    return RedirectResponse(base(request) + "/login", status_code=303)


def _error_page(request: Request, status: int, message: str):
    viewer = sessions.get(request.cookies.get(COOKIE))
    context = {"request": request, "base": base(request), "viewer": viewer, "project": None,
               "projects": [], "csrf": viewer.csrf if viewer else "", "section": "error", "status": status,
               "message": message}
    return templates.TemplateResponse(request, "error.html", context, status_code=status)


@console.exception_handler(Refused)
async def _refused(request: Request, exc: Refused):
    return _error_page(request, exc.status, exc.message)


@console.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException):
    message = "There is no such page." if exc.status_code == 404 else str(exc.detail)
    return _error_page(request, exc.status_code, message)


@console.exception_handler(PlatformError)
async def _platform_error(request: Request, exc: PlatformError):
    return _error_page(request, exc.status, exc.message)


@console.exception_handler(Exception)
async def _unexpected(request: Request, exc: Exception):
    log.exception("console page %s failed", request.url.path)
    return _error_page(request, 500, "Something went wrong on the platform; the error is in the control plane's log.")


# -- login ------------------------------------------------------------------------------------------------
@console.get("/login", response_class=HTMLResponse)
async def login_form(request: Request, error: str = ""):
    token = sessions.sign(str(time.time_ns()))
    response = templates.TemplateResponse(request, "login.html", {
        "request": request, "base": base(request), "viewer": None, "project": None, "projects": [],
        "csrf": token, "error": error, "section": "login"}, status_code=401 if error else 200)
    response.set_cookie(LOGIN_COOKIE, token, httponly=True, samesite="strict", path=base(request) + "/")
    return response


@console.post("/login")
async def login(request: Request):
    form = await request.form()
    if not same(form.get("csrf"), request.cookies.get(LOGIN_COOKIE)) or sessions.unsign(form.get("csrf")) is None:
        return await login_form(request, error="The login form expired; try again.")
    secret = str(form.get("key", "")).strip()
    with session_scope(get_settings().database_url) as session:
        admin = bool(secret) and auth.is_admin(session, secret)
        project = None if admin or not secret else auth.key_project(session, secret)
        label = "" if project is None else session.scalar(select(ApiKey.label).where(ApiKey.project_id == project,
                                                                                       ApiKey.key_hash == _hash(secret)))
    if not admin and project is None:
        return await login_form(request, error="Unknown API key: log in with the admin key or a project's API key.")
    viewer = Viewer(secret=secret, admin=admin, project=project, key_label=label or "")
    response = RedirectResponse(base(request) + f"/p/{viewer.home_project}/models", status_code=303)
    response.set_cookie(COOKIE, sessions.create(viewer), max_age=MAX_AGE_S, httponly=True, samesite="strict",
                        path=base(request) + "/", secure=request.url.scheme == "https")
    response.delete_cookie(LOGIN_COOKIE, path=base(request) + "/")
    return response


def _hash(secret: str) -> str:
    from serve_apps.contract import hash_key

    return hash_key(secret)


@console.post("/logout")
async def logout(request: Request):
    viewer = viewer_of(request)
    await posted(request, viewer)
    sessions.drop(request.cookies.get(COOKIE))
    response = RedirectResponse(base(request) + "/login", status_code=303)
    response.delete_cookie(COOKIE, path=base(request) + "/")
    return response


@console.get("/")
async def home(request: Request):
    viewer = viewer_of(request)
    return go(request, f"/p/{viewer.home_project}/models")


# -- model square (spec §4.1) ------------------------------------------------------------------------------
@console.get("/p/{project}/models", response_class=HTMLResponse)
async def model_square(request: Request, project: str):
    viewer = access(request, project)
    standing = {p.model_id: p for p in await presets_router.project_presets(project)}
    return await page(request, "models.html", viewer, project, models=BUILTIN_MODELS, standing=standing)


# -- API keys (spec §9.1) ----------------------------------------------------------------------------------
async def _keys_page(request: Request, viewer: Viewer, project: str, status: int = 200, **context):
    keys = await keys_router.list_keys(project)
    return await page(request, "keys.html", viewer, project, status, keys=keys, **context)


@console.get("/p/{project}/keys", response_class=HTMLResponse)
async def keys_page(request: Request, project: str, notice: str = ""):
    viewer = access(request, project)
    return await _keys_page(request, viewer, project, notice=notice)


@console.post("/p/{project}/keys", response_class=HTMLResponse)
async def create_key(request: Request, project: str):
    viewer = access(request, project)
    form = await posted(request, viewer)
    try:
        spec = KeyCreate(label=form.get("label", ""), description=form.get("description", ""))
        created = await keys_router.create_key(project, spec)
    except (PlatformError, ValidationError) as exc:
        return await _keys_page(request, viewer, project, status_of(exc), error=reason(exc), form=dict(form))
    return await _keys_page(request, viewer, project, created=created)


@console.post("/p/{project}/keys/{key_id}/delete")
async def delete_key(request: Request, project: str, key_id: str):
    viewer = access(request, project)
    await posted(request, viewer)
    try:
        await keys_router.delete_key(project, key_id)
    except PlatformError as exc:
        return await _keys_page(request, viewer, project, status_of(exc), error=reason(exc))
    return go(request, f"/p/{project}/keys", "API key deleted.")


# -- playground (spec §5.1) --------------------------------------------------------------------------------
async def _chat_targets(project: str) -> list[dict]:
    """What the playground can talk to: chat presets, the project's callable services, its endpoints."""
    targets = [{"name": m.id, "kind": "preset", "thinking": bool(m.thinking_kwarg)} for m in BUILTIN_MODELS
               if m.is_chat]
    for s in await services_router.list_services(project):
        if s.status in CALLABLE_STATUSES and _card(s.model) is not None and _card(s.model).is_chat:
            targets.append({"name": s.name, "kind": "service", "thinking": bool(_card(s.model).thinking_kwarg)})
    for e in await endpoints_router.list_endpoints(project):
        if e.status == "in_use":
            targets.append({"name": e.name, "kind": "endpoint", "thinking": False})
    return targets


def _card(model_id: str):
    try:
        return builtin(model_id)
    except KeyError:
        return None


@console.get("/p/{project}/playground", response_class=HTMLResponse)
async def playground(request: Request, project: str, model: str = ""):
    viewer = access(request, project)
    return await page(request, "playground.html", viewer, project, targets=await _chat_targets(project), chosen=model,
                defaults={"temperature": console_schemas.TEMPERATURE_DEFAULT, "top_p": console_schemas.TOP_P_DEFAULT,
                          "top_k": console_schemas.TOP_K_DEFAULT})


def _thinking_kwarg(project: str, name: str) -> str | None:
    card = _card(name)
    if card is None:
        with session_scope(get_settings().database_url) as session:
            model_id = session.scalar(select(Service.model_id).where(Service.project_id == project,
                                                                     Service.name == name))
        card = _card(model_id) if model_id else None
    return card.thinking_kwarg if card is not None else None


def gateway_url() -> str:
    settings = get_settings()
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    return f"http://{host}:{settings.port}"


def _playground_proof(secret: str) -> str:
    with session_scope(get_settings().database_url) as session:
        return auth.playground_proof_for(session, secret)


@console.post("/p/{project}/playground/chat")
async def playground_chat(request: Request, project: str):
    """The chat, streamed: the gateway's /v1/chat/completions with the session's key, marked as a playground
    call (recorded, limits and quotas apply, left out of call statistics)."""
    viewer = access(request, project)
    await check_csrf(request, viewer)
    if viewer.admin:
        return JSONResponse(status_code=400, content={"error_msg": "The playground calls models with an API key "
                                                                   "of the project: log in with one."})
    try:
        chat = console_schemas.PlaygroundChat.model_validate_json(await request.body())
    except ValidationError as exc:
        return JSONResponse(status_code=400, content={"error_msg": reason(exc)})
    body: dict[str, Any] = {"model": chat.model, "messages": [m.model_dump() for m in chat.messages],
                            "stream": True, "stream_options": {"include_usage": True},
                            "temperature": chat.temperature, "top_p": chat.top_p, "top_k": chat.top_k,
                            "max_tokens": chat.max_tokens}
    kwarg = _thinking_kwarg(project, chat.model)
    if kwarg:
        body["chat_template_kwargs"] = {kwarg: chat.thinking}
    # The console's proof (cluster.auth.playground_proof): a caller's own header marks nothing.
    proof = await run_in_threadpool(_playground_proof, viewer.secret)
    headers = {"Authorization": f"Bearer {viewer.secret}", "X-MaaS-Playground": proof}
    if request.client is not None:
        headers["X-Forwarded-For"] = request.client.host
    client = httpx.AsyncClient(base_url=gateway_url(), timeout=httpx.Timeout(300, connect=10))
    try:
        upstream = await client.send(client.build_request("POST", "/v1/chat/completions", json=body,
                                                          headers=headers), stream=True)
    except httpx.HTTPError as exc:
        await client.aclose()
        log.warning("playground: the gateway at %s did not answer: %s", gateway_url(), exc)
        return JSONResponse(status_code=502, content={"error_msg": "The gateway did not answer; try again."})
    if upstream.status_code != 200:
        text = await upstream.aread()
        await upstream.aclose()
        await client.aclose()
        try:
            answer = json.loads(text)
        except ValueError:
            answer = {"error_msg": text.decode(errors="replace")[:500]}
        message = answer.get("error_msg") or answer.get("message") or str(answer)
        return JSONResponse(status_code=upstream.status_code, content={"error_msg": message})

    async def relay():
        try:
            async for chunk in upstream.aiter_raw():
                yield chunk
        finally:
            await upstream.aclose()
            await client.aclose()

    return StreamingResponse(relay(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})


# -- my services (spec §4.5-4.6) ---------------------------------------------------------------------------
async def _deployable(project: str) -> list[dict]:
    models = [{"id": m.id, "label": f"{m.id} (catalog)"} for m in BUILTIN_MODELS]
    for m in await my_models_router.list_models(project):
        models.append({"id": m.name, "label": f"{m.name} (my model)"})
    return models


async def _services_page(request: Request, viewer: Viewer, project: str, status: int = 200, **context):
    services = await services_router.list_services(project)
    return await page(request, "services.html", viewer, project, status, services=services,
                deployable=await _deployable(project), **context)


@console.get("/p/{project}/services", response_class=HTMLResponse)
async def services_page(request: Request, project: str, notice: str = "", model: str = ""):
    viewer = access(request, project)
    return await _services_page(request, viewer, project, notice=notice, form={"model": model})


@console.post("/p/{project}/services", response_class=HTMLResponse)
async def deploy_service(request: Request, project: str):
    viewer = access(request, project)
    form = await posted(request, viewer)
    try:
        spec = ServiceCreate(name=form.get("name", ""), model=form.get("model", ""),
                             model_version=form.get("model_version") or "1",
                             instances=form.get("instances") or 1, qps=form.get("qps") or None,
                             auto_stop=form.get("auto_stop") or None, moderation=form.get("moderation") != "off",
                             description=form.get("description", ""))
        created = await services_router.create_service(project, spec)
    except (PlatformError, ValidationError) as exc:
        return await _services_page(request, viewer, project, status_of(exc), error=reason(exc), form=dict(form))
    return go(request, f"/p/{project}/services/{created.id}", f"Service {created.name} is deploying.")


async def _service_page(request: Request, viewer: Viewer, project: str, service: str, status: int = 200, **context):
    view = await services_router.get_service(project, service)
    events = await services_router.list_events(project, view.id)
    return await page(request, "service.html", viewer, project, status, service=view, events=events[:50],
                gateway=str(request.base_url).split("/api")[0].rstrip("/") + "/v1", **context)


@console.get("/p/{project}/services/{service}", response_class=HTMLResponse)
async def service_page(request: Request, project: str, service: str, notice: str = ""):
    viewer = access(request, project)
    return await _service_page(request, viewer, project, service, notice=notice)


@console.get("/p/{project}/services/{service}/status", response_class=HTMLResponse)
async def service_status(request: Request, project: str, service: str):
    """The status block alone (htmx polls it every 2 s)."""
    viewer = access(request, project)
    view = await services_router.get_service(project, service)
    events = await services_router.list_events(project, view.id)
    return await page(request, "service_status.html", viewer, project, service=view, events=events[:50])


@console.post("/p/{project}/services/{service}/{action}", response_class=HTMLResponse)
async def service_action(request: Request, project: str, service: str, action: str):
    viewer = access(request, project)
    form = await posted(request, viewer)
    try:
        if action == "start":
            view = await services_router.start_service(project, service)
        elif action == "stop":
            view = await services_router.stop_service(project, service)
        elif action == "scale":
            view = await services_router.scale_service(project, service, ScaleRequest(
                instances=form.get("instances") or 0, confirm=form.get("confirm", "")))
        elif action == "qps":
            view = await services_router.set_service_qps(project, service, QpsRequest(qps=form.get("qps") or 0))
        elif action == "upgrade":
            view = await services_router.upgrade_service(project, service, UpgradeRequest(
                model_version=form.get("model_version", "")))
        elif action == "delete":
            confirmation("DELETE", "Deleting a service")(form.get("confirm", ""))
            view = await services_router.delete_service(project, service, None)
            return go(request, f"/p/{project}/services", f"Service {view.name} is being deleted.")
        else:
            raise Refused(404, "There is no such page.")
    except (PlatformError, ValidationError) as exc:
        return await _service_page(request, viewer, project, service, status_of(exc), error=reason(exc))
    return go(request, f"/p/{project}/services/{view.id}", f"{action.capitalize()} requested: {view.status}.")


# -- call statistics (spec §9.2) ---------------------------------------------------------------------------
@console.get("/p/{project}/usage", response_class=HTMLResponse)
async def usage_page(request: Request, project: str, range: str = "today", granularity: str = "",
                     service_id: str = "", key_id: str = ""):
    viewer = access(request, project)
    error = ""
    granularity = granularity or ("minute" if range == "today" else "")
    try:
        params = UsageFilter(range=range, granularity=granularity or None, service_id=service_id or None,
                             key_ids=[key_id] if key_id else [])
    except (PlatformError, ValidationError) as exc:
        error, params = reason(exc), UsageFilter(range="today", granularity="minute")
    summary = await run_in_threadpool(usage_router.usage_summary, project, params)
    series = await run_in_threadpool(usage_router.usage_series, project, params)
    failures = await run_in_threadpool(usage_router.usage_failures, project, params)
    buckets = series.buckets
    chart = {"labels": [b.start.strftime("%H:%M" if params.granularity == "minute" else "%m-%d %H:%M")
                        for b in buckets],
             "calls": [b.calls for b in buckets], "failed": [b.failed for b in buckets],
             "tokens": [b.total_tokens for b in buckets],
             "ttft_p50": [b.ttft_ms.p50 for b in buckets], "ttft_p99": [b.ttft_ms.p99 for b in buckets],
             "tpot_p50": [b.tpot_ms.p50 for b in buckets]}
    export = f"{base(request)}/p/{project}/usage/export?" + str(request.url.query)
    keys = await keys_router.list_keys(project)
    return await page(request, "usage.html", viewer, project, summary=summary, failures=failures, chart=chart,
                      params=params, error=error, export=export, keys=keys)


@console.get("/p/{project}/usage/export")
async def usage_export(request: Request, project: str, range: str = "today", granularity: str = "",
                       service_id: str = "", key_id: str = ""):
    """The xlsx export of the same filters (one sheet per chart), through the REST route's function."""
    access(request, project)
    granularity = granularity or ("minute" if range == "today" else "")
    params = usage_router.ExportParams(range=range, granularity=granularity or None, service_id=service_id or None,
                                       key_ids=[key_id] if key_id else [])
    return await run_in_threadpool(usage_router.usage_export, project, params)


# -- fine-tuning (spec §7) ---------------------------------------------------------------------------------
def row_errors(status_reason: str) -> list[dict]:
    """The bad rows of a failed dataset validation, from the job's report (train_jobs.datasets.schema.report)."""
    rows = []
    for line in status_reason.splitlines():
        match = ROW_ERROR.match(line)
        if match:
            rows.append({"line": int(match[1]), "field": match[2], "reason": match[3]})
    return rows


async def _finetune_page(request: Request, viewer: Viewer, project: str, status: int = 200, **context):
    jobs = await run_in_threadpool(finetune_router.list_jobs, project)
    return await page(request, "finetune.html", viewer, project, status, jobs=jobs[::-1],
                models=[m for m in BUILTIN_MODELS if m.is_chat], **context)


@console.get("/p/{project}/finetune", response_class=HTMLResponse)
async def finetune_page(request: Request, project: str, notice: str = ""):
    viewer = access(request, project)
    return await _finetune_page(request, viewer, project, notice=notice)


@console.post("/p/{project}/finetune/datasets", response_class=HTMLResponse)
async def create_job(request: Request, project: str):
    """Upload the dataset, then create the job: a bad dataset fails the job at once with every bad row."""
    viewer = access(request, project)
    form = await posted(request, viewer)
    upload = form.get("dataset")
    try:
        if not isinstance(upload, UploadFile) or not upload.filename:
            raise PlatformError("MaaS.0400", reason="Choose a dataset file to upload.")
        stored = await run_in_threadpool(datasets_router.upload_dataset, project, upload)
        spec = JobCreate(name=form.get("name", ""), model=form.get("model", ""), type=form.get("type", "lora"),
                         dataset=stored["id"], format=form.get("format", "alpaca"),
                         output_model=form.get("output_model", ""), epochs=form.get("epochs") or 1,
                         learning_rate=form.get("learning_rate") or 2e-5,
                         global_batch_size=form.get("global_batch_size") or 32)
        job = await run_in_threadpool(finetune_router.create_job, project, spec)
    except (PlatformError, ValidationError) as exc:
        return await _finetune_page(request, viewer, project, status_of(exc), error=reason(exc), form=dict(form))
    return await _finetune_page(request, viewer, project, 200 if job.status != "failed" else 400, created=job,
                                bad_rows=row_errors(job.status_reason))


async def _job_page(request: Request, viewer: Viewer, project: str, job: str, status: int = 200, search: str = "",
                   **context):
    view = await run_in_threadpool(finetune_router.get_job, project, job)
    points = await run_in_threadpool(finetune_router.job_metrics, project, view.id)
    try:
        logs = (await run_in_threadpool(finetune_router.job_logs, project, view.id, search)).body.decode()
    except Exception:  # noqa: BLE001 - the Ray job's logs may be unreachable; the page still renders
        logs = "(logs not available)"
    try:
        checkpoints = await run_in_threadpool(finetune_router.job_checkpoints, project, view.id)
    except PlatformError:
        checkpoints = []
    loss = {"steps": [p.get("step") for p in points if "loss" in p], "loss": [p["loss"] for p in points if "loss" in p]}
    return await page(request, "job.html", viewer, project, status, job=view, loss=loss, logs=logs[-200_000:],
                      search=search, checkpoints=checkpoints, bad_rows=row_errors(view.status_reason), **context)


@console.get("/p/{project}/finetune/{job}", response_class=HTMLResponse)
async def job_page(request: Request, project: str, job: str, search: str = "", notice: str = ""):
    viewer = access(request, project)
    return await _job_page(request, viewer, project, job, search=search, notice=notice)


@console.post("/p/{project}/finetune/{job}/{action}", response_class=HTMLResponse)
async def job_action(request: Request, project: str, job: str, action: str):
    viewer = access(request, project)
    form = await posted(request, viewer)
    try:
        if action == "stop":
            view = await run_in_threadpool(finetune_router.stop_job, project, job)
        elif action == "continue":
            view = await run_in_threadpool(finetune_router.continue_job, project, job)
        elif action == "promote":
            await run_in_threadpool(finetune_router.promote_checkpoint, project, job, form.get("checkpoint", ""),
                                    Promote(output_model=form.get("output_model") or None))
            view = await run_in_threadpool(finetune_router.get_job, project, job)
        else:
            raise Refused(404, "There is no such page.")
    except (PlatformError, ValidationError) as exc:
        return await _job_page(request, viewer, project, job, status_of(exc), error=reason(exc))
    return go(request, f"/p/{project}/finetune/{view.id}", f"{action.capitalize()} requested: {view.status}.")


# -- presets, endpoints (spec §4.2-4.4) ---------------------------------------------------------------
async def _offers_page(request: Request, viewer: Viewer, project: str, status: int = 200, **context):
    presets = await presets_router.project_presets(project)
    endpoints = await endpoints_router.list_endpoints(project)
    services = await services_router.list_services(project)
    return await page(request, "offers.html", viewer, project, status, presets=presets, endpoints=endpoints,
                services=services, **context)


@console.get("/p/{project}/offers", response_class=HTMLResponse)
async def offers_page(request: Request, project: str, notice: str = ""):
    viewer = access(request, project)
    return await _offers_page(request, viewer, project, notice=notice)


@console.post("/p/{project}/offers/{action}", response_class=HTMLResponse)
async def offers_action(request: Request, project: str, action: str):
    viewer = access(request, project)
    form = await posted(request, viewer)
    try:
        if action == "activate":
            await presets_router.activate(project, ActivateSpec(models=[form.get("model")]))
        elif action == "claim":
            await presets_router.claim(project, form.get("model", ""))
        elif action == "endpoint":
            await endpoints_router.create_endpoint(project, EndpointCreate(
                name=form.get("name", ""), service=form.get("service", ""), rpm=form.get("rpm") or None,
                tpm=form.get("tpm") or None))
        elif action == "disable":
            await endpoints_router.disable_endpoint(project, form.get("endpoint", ""),
                                                    EndpointConfirm(confirm=form.get("confirm", "")))
        elif action == "delete":
            confirmation("DELETE", "Deleting an endpoint")(form.get("confirm", ""))
            await endpoints_router.delete_endpoint(project, form.get("endpoint", ""), None)
        else:
            raise Refused(404, "There is no such page.")
    except (PlatformError, ValidationError) as exc:
        return await _offers_page(request, viewer, project, status_of(exc), error=reason(exc))
    return go(request, f"/p/{project}/offers", "Done.")


# -- admin: projects ---------------------------------------------------------------------------------------
async def _projects_page(request: Request, viewer: Viewer, status: int = 200, **context):
    projects = await projects_router.list_projects(None)
    quotas = {p.id: await projects_router.get_quotas(p.id) for p in projects}
    return await page(request, "projects.html", viewer, None, status, project_rows=projects, quotas=quotas,
                      quota_fields=list(QuotaSpec.model_fields), **context)


@console.get("/admin/projects", response_class=HTMLResponse)
async def projects_page(request: Request, notice: str = ""):
    viewer = admin_only(request)
    return await _projects_page(request, viewer, notice=notice)


@console.post("/admin/projects", response_class=HTMLResponse)
async def create_project(request: Request):
    viewer = admin_only(request)
    form = await posted(request, viewer)
    try:
        created = await projects_router.create_project(ProjectCreate(id=form.get("id", ""),
                                                                     name=form.get("name", "")), None)
    except (PlatformError, ValidationError) as exc:
        return await _projects_page(request, viewer, status_of(exc), error=reason(exc), form=dict(form))
    return go(request, "/admin/projects", f"Project {created.id} created.")


@console.post("/admin/projects/{project}/{action}", response_class=HTMLResponse)
async def project_action(request: Request, project: str, action: str):
    viewer = admin_only(request)
    form = await posted(request, viewer)
    try:
        if action == "delete":
            confirmation("DELETE", "Deleting a project")(form.get("confirm", ""))
            await projects_router.delete_project(project, None, None)
        elif action == "quotas":
            await projects_router.set_quotas(project, QuotaSpec(**{f: form.get(f) or None for f in QuotaSpec.model_fields}),
                                             None)
        else:
            raise Refused(404, "There is no such page.")
    except (PlatformError, ValidationError) as exc:
        return await _projects_page(request, viewer, status_of(exc), error=reason(exc))
    return go(request, "/admin/projects", f"Project {project}: {action} done.")
