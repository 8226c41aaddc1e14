"""API keys: creation rules (spec §9.1), listing, deletion. No HTTP here (who is calling: `cluster.auth`)."""

from __future__ import annotations

import secrets
import uuid

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cluster.keys.schemas import KeyCreate, KeyCreated, KeyView
from cluster.state.db import ApiKey
from cluster.state.lookup import lock_project, owned
from serve_apps.contract import hash_key
from serve_apps.errors import PlatformError

MAX_LIVE_KEYS = 30


def new_secret() -> str:
    return "sk-" + secrets.token_urlsafe(36)


def create_key(session: Session, project_id: str, spec: KeyCreate) -> tuple[KeyCreated, str]:
    lock_project(session, project_id)  # parallel creates count one after another
    live = session.scalar(select(func.count()).select_from(ApiKey).where(ApiKey.project_id == project_id))
    if live >= MAX_LIVE_KEYS:
        raise PlatformError("MaaS.0400", reason=f"At most {MAX_LIVE_KEYS} API keys can exist at once; "
                                                "delete one to create another.")
    if session.scalar(select(ApiKey).where(ApiKey.project_id == project_id, ApiKey.label == spec.label)):
        raise PlatformError("MaaS.0409", reason=f"An API key labelled {spec.label!r} already exists.")
    secret = new_secret()
    row = ApiKey(id=uuid.uuid4().hex[:16], project_id=project_id, label=spec.label,
                 description=spec.description, key_hash=hash_key(secret), prefix=secret[:4], suffix=secret[-4:])
    session.add(row)
    session.flush()
    return KeyCreated(**KeyView.of(row).model_dump(), key=secret), row.key_hash


def list_keys(session: Session, project_id: str) -> list[KeyView]:
    rows = session.scalars(select(ApiKey).where(ApiKey.project_id == project_id).order_by(ApiKey.created_at))
    return [KeyView.of(row) for row in rows]


def delete_key(session: Session, project_id: str, key_id: str) -> str:
    """Delete by id (or label) and return the hash, so the caller can revoke it everywhere."""
    row = owned(session, ApiKey, project_id, key_id, "API key", name=ApiKey.label)
    session.delete(row)
    return row.key_hash
