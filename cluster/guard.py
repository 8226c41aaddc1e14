"""The control plane's ASGI guards, which answer before a request's body is read:
- CallerGuard: a route that needs a key (the admin's, or one with access to the path's project) is refused
  with the answer its dependencies would give (400 ModelArts.81002, 401 ModelArts.81003, 403, 404) before a
  byte of the body is read: nobody makes a replica spool a 1 GiB upload for free.
- BodyLimit: a body over its limit (8 MB; a dataset upload: MAAS_MAX_UPLOAD_MB) is refused with 413, and a
  replica reads at most MAAS_MAX_LARGE_BODIES bodies over 1 MiB at once (503 after a short wait)."""

from __future__ import annotations

import asyncio

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.routing import Match

from cluster import auth
from cluster.deps import require_admin, require_project
from cluster.settings import get_settings
from cluster.state.db import session_scope
from serve_apps.contract import bearer_token
from serve_apps.errors import PlatformError
from serve_apps.gateway.guard import buffered, empty_body

MAX_JSON_BYTES = 8 * 1024 * 1024
LARGE_BODY_BYTES = 1024 * 1024
LARGE_BODY_WAIT_S = 10.0


def _json(error: PlatformError, status: int | None = None, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(status_code=status or error.status, content=error.body(), headers=headers)


class CallerGuard:
    """ASGI middleware: the key of a route that needs one is checked before the app (and its body) runs."""

    def __init__(self, inner, app: FastAPI):
        self.inner, self.app = inner, app
        self._needs: dict[int, str] | None = None  # id(route) -> "admin" or "project", built on first use

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            need, params = self._need(scope)
            if need is not None:
                refused = await run_in_threadpool(_refusal, need, dict(scope["headers"]), params)
                if refused is not None:
                    return await _json(refused)(scope, empty_body, send)
        await self.inner(scope, receive, send)

    def _need(self, scope) -> tuple[str | None, dict]:
        """What the route the router will pick needs ("admin", "project" or None), and its path parameters."""
        if self._needs is None:
            self._needs = {id(route): need for route in self.app.routes if isinstance(route, APIRoute)
                           for need in [_route_need(route)] if need}
        for route in self.app.routes:
            match, child = route.matches(scope)
            if match is Match.FULL:
                return self._needs.get(id(route)), child.get("path_params", {})
        return None, {}


def _route_need(route: APIRoute) -> str | None:
    calls, pending = set(), [route.dependant]
    while pending:
        dependant = pending.pop()
        calls.add(dependant.call)
        pending += dependant.dependencies
    return "admin" if require_admin in calls else "project" if require_project in calls else None


def _refusal(need: str, headers: dict, params: dict) -> PlatformError | None:
    """The refusal `require_admin` / `require_project` would raise, or None when the key may go on."""
    secret = bearer_token(headers.get(b"authorization", b"").decode("latin-1"))
    if not secret:
        return PlatformError("ModelArts.81002")
    with session_scope(get_settings().database_url) as session:
        try:
            if need == "project":
                auth.project_access(session, secret, params.get("project_id", ""))
            elif not auth.is_admin(session, secret):
                return PlatformError("ModelArts.81003")
        except PlatformError as refused:
            return refused
    return None


class BodyLimit:
    """ASGI middleware: a request body over its limit (8 MB; a dataset upload: MAAS_MAX_UPLOAD_MB) is refused
    with 413 before it is read; bodies over 1 MiB are read MAAS_MAX_LARGE_BODIES at a time per replica."""

    def __init__(self, inner):
        self.inner = inner
        self._large_bodies: dict[asyncio.AbstractEventLoop, asyncio.Semaphore] = {}  # a replica has one loop

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.inner(scope, receive, send)
        upload = scope["path"].endswith("/datasets")
        limit = get_settings().max_upload_mb * 2**20 if upload else MAX_JSON_BYTES
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            if not length.isdigit() or int(length) > limit:
                return await _json(PlatformError("MaaS.0413", limit=limit))(scope, empty_body, send)
        elif upload:  # an upload streams to disk: its size must be known up front
            reason = "A dataset upload needs a Content-Length header."
            return await _json(PlatformError("MaaS.0400", reason=reason), 411)(scope, empty_body, send)
        if length is not None and int(length) <= LARGE_BODY_BYTES:
            return await self._read_then_call(scope, receive, send, length)
        large_bodies = self._large_bodies.setdefault(asyncio.get_running_loop(),
                                                     asyncio.Semaphore(get_settings().max_large_bodies))
        try:
            await asyncio.wait_for(large_bodies.acquire(), LARGE_BODY_WAIT_S)
        except TimeoutError:
            refused = PlatformError("MaaS.0503", reason="too many large requests (dataset uploads) at once on this "
                                                        "replica; try again in a minute")
            return await _json(refused, headers={"Retry-After": "60"})(scope, empty_body, send)
        try:
            await self._read_then_call(scope, receive, send, length)
        finally:
            large_bodies.release()

    async def _read_then_call(self, scope, receive, send, length) -> None:
        if length is None:  # chunked: read here, counting, and replayed to the app
            receive = await buffered(receive, MAX_JSON_BYTES)
            if receive is None:
                return await _json(PlatformError("MaaS.0413", limit=MAX_JSON_BYTES))(scope, empty_body, send)
        await self.inner(scope, receive, send)
