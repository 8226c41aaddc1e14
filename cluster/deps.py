"""What every control-plane router needs: who is calling (admin or a project's API key), the project it
may act on, and the accounting actor to tell about changes."""

from __future__ import annotations

from typing import Annotated

import ray
from fastapi import Depends, Request
from sqlalchemy import select

from cluster import keys
from cluster.db import ApiKey, Project, session_scope
from cluster.settings import ACCOUNTING_ACTOR, NAMESPACE, get_settings
from serve_apps.errors import PlatformError


def _bearer(request: Request) -> str:
    auth = request.headers.get("authorization", "")
    if not auth.startswith("Bearer ") or not auth[7:].strip():
        raise PlatformError("ModelArts.81002")
    return auth[7:].strip()


def require_admin(request: Request) -> None:
    secret = _bearer(request)
    with session_scope(get_settings().database_url) as session:
        if not keys.is_admin(session, secret):
            raise PlatformError("ModelArts.81003")


def require_project(project_id: str, request: Request) -> str:
    """The admin key may act on any project; an API key only on its own project."""
    secret = _bearer(request)
    with session_scope(get_settings().database_url) as session:
        if keys.is_admin(session, secret):
            if session.get(Project, project_id) is None:
                raise PlatformError("MaaS.0404", what=f"Project {project_id!r}")
            return project_id
        row = session.scalar(select(ApiKey).where(ApiKey.key_hash == keys.hash_key(secret)))
        if row is None:
            raise PlatformError("ModelArts.81003")
        if row.project_id != project_id:
            raise PlatformError("MaaS.0403", reason=f"This key has no access to project {project_id!r}.")
        return project_id


Admin = Annotated[None, Depends(require_admin)]
ProjectId = Annotated[str, Depends(require_project)]


def database_url() -> str:
    return get_settings().database_url


def accounting_actor():
    return ray.get_actor(ACCOUNTING_ACTOR, namespace=NAMESPACE)


async def reload_accounting() -> None:
    """Every change a caller's admission depends on is committed first, then the actor reloads it."""
    await accounting_actor().reload.remote()


def reload_accounting_blocking(log) -> None:
    """The same from a background thread (reconciler, job sync): waits, and never raises (a restarting actor
    reloads from SQL by itself)."""
    try:
        ray.get(accounting_actor().reload.remote(), timeout=30)
    except Exception:  # noqa: BLE001
        log.exception("reloading the accounting actor failed")
