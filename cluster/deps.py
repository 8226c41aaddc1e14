"""What every control-plane router needs: who is calling (admin or a project's API key), the project it
may act on, and the confirmation word an irreversible action needs. (A project's resource by id or name:
`cluster.state.lookup.owned`, which the rules use too.)"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Query, Request

from cluster import auth
from cluster.schemas import confirmation
from cluster.settings import get_settings
from cluster.state.db import session_scope
from serve_apps.contract import bearer_token
from serve_apps.errors import PlatformError


def _bearer(request: Request) -> str:
    secret = bearer_token(request.headers.get("authorization", ""))
    if not secret:
        raise PlatformError("ModelArts.81002")
    return secret


def require_admin(request: Request) -> None:
    secret = _bearer(request)
    with session_scope(get_settings().database_url) as session:
        if not auth.is_admin(session, secret):
            raise PlatformError("ModelArts.81003")


def is_admin_request(request: Request) -> bool:
    """Whether the request carries the admin key (for routes that show more to the admin, refuse no one)."""
    secret = bearer_token(request.headers.get("authorization", ""))
    if not secret:
        return False
    with session_scope(get_settings().database_url) as session:
        return auth.is_admin(session, secret)


def require_project(project_id: str, request: Request) -> str:
    """The admin key may act on any project; an API key only on its own project."""
    secret = _bearer(request)
    with session_scope(get_settings().database_url) as session:
        return auth.project_access(session, secret, project_id)


Admin = Annotated[None, Depends(require_admin)]
ProjectId = Annotated[str, Depends(require_project)]


def database_url() -> str:
    return get_settings().database_url


def Confirmed(word: str, what: str):  # noqa: N802 - used like a type: `_: Confirmed("DELETE", "Deleting x")`
    """A route dependency: the query parameter `confirm` must be `word`."""
    check = confirmation(word, what)

    def dependency(confirm: str = Query("", description=f"The confirmation text {word}.")) -> None:
        check(confirm)

    return Annotated[None, Depends(dependency)]
