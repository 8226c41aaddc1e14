"""What every console page shares: the templates, the sessions, who the viewer is and what it may see (the
REST API's own rule, cluster.auth), the CSRF check, the platform's message for a refused action, rendering.
The pages (cluster.console.app and the *_pages modules beside it) are built on these."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import Request
from fastapi.responses import RedirectResponse
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError

from cluster import auth
from cluster.console.session import COOKIE, Sessions, Viewer, same
from cluster.projects import router as projects_router
from cluster.settings import get_settings
from cluster.state.db import session_scope
from serve_apps.errors import PlatformError

HERE = Path(__file__).resolve().parent
templates = Jinja2Templates(directory=str(HERE / "templates"))
sessions = Sessions()


class LoginNeeded(Exception):
    pass


class Refused(Exception):
    """A page the viewer may not see (403) or that does not exist (404), rendered as the error page."""

    def __init__(self, status: int, message: str):
        self.status, self.message = status, message


# -- helpers ----------------------------------------------------------------------------------------------
def base(request: Request) -> str:
    """The console's URL path (`/api/console` behind Serve), from the mount's root_path."""
    return request.scope.get("root_path", "").rstrip("/")


def reason(exc: Exception) -> str:
    """The platform's own message for a refused action."""
    if isinstance(exc, PlatformError):
        return exc.message
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'form'}: {e['msg'].removeprefix('Value error, ')}"
                         for e in exc.errors())
    return str(exc)


def status_of(exc: Exception) -> int:
    return exc.status if isinstance(exc, PlatformError) else 400


def viewer_of(request: Request) -> Viewer:
    viewer = sessions.get(request.cookies.get(COOKIE))
    if viewer is None:
        raise LoginNeeded()
    return viewer


def access(request: Request, project: str) -> Viewer:
    """The logged-in viewer, allowed on `project` by the same rule as the REST API (cluster.auth)."""
    viewer = viewer_of(request)
    try:
        with session_scope(get_settings().database_url) as session:
            auth.project_access(session, viewer.secret, project)
    except PlatformError as exc:
        if exc.spec.code == "ModelArts.81003":  # the key was deleted: the session ends
            sessions.drop(request.cookies.get(COOKIE))
            raise LoginNeeded() from None
        raise Refused(exc.status, exc.message) from None
    return viewer


def admin_only(request: Request) -> Viewer:
    viewer = viewer_of(request)
    if not viewer.admin:
        raise Refused(403, "This page is for the platform administrator (log in with the admin key).")
    return viewer


async def check_csrf(request: Request, viewer: Viewer, form: Any | None = None) -> None:
    token = request.headers.get("x-csrf-token") or (form.get("csrf") if form is not None else None)
    if not same(token, viewer.csrf):
        raise Refused(403, "The form expired or did not come from this console; reload the page and try again.")


async def posted(request: Request, viewer: Viewer):
    form = await request.form()
    await check_csrf(request, viewer, form)
    return form


async def projects_of(viewer: Viewer) -> list[str]:
    if not viewer.admin:
        return [viewer.project]
    return [p.id for p in await projects_router.list_projects(None)]


async def page(request: Request, name: str, viewer: Viewer, project: str | None, status: int = 200, **context):
    context |= {"request": request, "base": base(request), "viewer": viewer, "project": project,
                "projects": await projects_of(viewer), "csrf": viewer.csrf, "section": name.split(".")[0]}
    return templates.TemplateResponse(request, name, context, status_code=status)


def go(request: Request, path: str, notice: str = "") -> RedirectResponse:
    suffix = f"?notice={quote(notice)}" if notice else ""
    return RedirectResponse(base(request) + path + suffix, status_code=303)


def fmt_time(epoch: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(epoch)) if epoch else "-"


templates.env.filters["when"] = fmt_time
