"""Who is calling: the admin key (created on first start, stored as a hash) or a project's API key. The
control plane's route dependencies (`cluster.deps`) ask here; no HTTP here."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from cluster.state.db import AdminKey, ApiKey, Project
from serve_apps.contract import hash_key
from serve_apps.errors import PlatformError


def ensure_admin_key(session: Session, wanted: str | None) -> str | None:
    """Create the admin key on first start, from MAAS_ADMIN_KEY if set. Returns the secret only when it was
    generated here (the caller shows it once), else None."""
    if session.scalar(select(AdminKey.id).limit(1)) is not None:
        return None
    secret = wanted or "admin-" + secrets.token_urlsafe(32)
    session.add(AdminKey(key_hash=hash_key(secret)))
    return None if wanted else secret


def is_admin(session: Session, secret: str) -> bool:
    digest = hash_key(secret)
    stored = session.scalars(select(AdminKey.key_hash)).all()
    return any(secrets.compare_digest(digest, h) for h in stored)


def key_project(session: Session, secret: str) -> str | None:
    """The project of an API key, or None when no such key exists."""
    return session.scalar(select(ApiKey.project_id).where(ApiKey.key_hash == hash_key(secret)))


def project_access(session: Session, secret: str, project_id: str) -> str:
    """The one rule of who may act on a project (the REST routes and the console): the admin key on any
    project that exists, an API key only on its own project."""
    if is_admin(session, secret):
        if session.get(Project, project_id) is None:
            raise PlatformError("MaaS.0404", what=f"Project {project_id!r}")
        return project_id
    owner = key_project(session, secret)
    if owner is None:
        raise PlatformError("ModelArts.81003")
    if owner != project_id:
        raise PlatformError("MaaS.0403", reason=f"This key has no access to project {project_id!r}.")
    return project_id


def save_credentials(path: Path, secret: str) -> None:
    """Write the admin key for the CLI: created 0600 from the start (never readable by others, not even for a
    moment), replacing an older file atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(secret + "\n")
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def playground_proof(admin_key_hashes: list[str], key_hash: str) -> str:
    """What the console sends as X-MaaS-Playground for a call made with the key of `key_hash`: only a holder of
    the database's admin key hashes (the console, the accounting actor) can make it, so no caller marks its own
    calls as playground calls (left out of statistics)."""
    secret = hashlib.sha256("maas-playground\n".join(sorted(admin_key_hashes)).encode()).digest()
    return hmac.new(secret, key_hash.encode(), hashlib.sha256).hexdigest()


def playground_proof_for(session: Session, secret: str) -> str:
    return playground_proof(list(session.scalars(select(AdminKey.key_hash))), hash_key(secret))


def cache_salt_secret(home: Path) -> str:
    """The platform's MAAS_CACHE_SALT_SECRET for a head `maas up` starts: made once (0600) in MAAS_HOME and kept,
    so every gateway replica salts a project's calls alike (its prefix cache hits across replicas and restarts)."""
    path = home / "cache_salt_secret"
    if not path.exists():
        save_credentials(path, secrets.token_urlsafe(32))
    return path.read_text().strip()
