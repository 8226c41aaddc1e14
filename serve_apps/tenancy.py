"""What keeps tenants apart on an engine they share (a preset's engine serves every project).

vLLM's prefix cache reuses the KV blocks of any earlier request with the same leading tokens, so the time to first
token tells a caller whether someone else sent that prefix lately. A request's `cache_salt` enters the hash of its
first block (vllm/v1/core/kv_cache_utils.py), so requests with different salts share no cached block. The gateway
sets the caller's project's salt on every generation request it sends to an engine, replacing whatever the client
sent: a project's calls share their cache, no two projects do.

The salt is an HMAC of the project id under a platform secret (`MAAS_CACHE_SALT_SECRET`), so it cannot be computed
from a project id. Without that setting each process draws a random secret: isolation holds, but a project's calls
reuse the cache only when they pass through the same gateway replica.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from functools import lru_cache

from serve_apps.settings import plane_settings


def cache_salt(project_id: str, secret: bytes | None = None) -> str:
    """The project's vLLM `cache_salt`: HMAC-SHA256 of its id, 43 base64url characters (vLLM takes at most 128
    and refuses '/', '\\', '@' and NUL)."""
    digest = hmac.new(secret if secret is not None else salt_secret(), project_id.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


@lru_cache(maxsize=1)
def salt_secret() -> bytes:
    """MAAS_CACHE_SALT_SECRET, or this process's own random secret."""
    configured = plane_settings().cache_salt_secret
    if configured is not None:
        return hashlib.sha256(b"maas-cache-salt\n" + configured.get_secret_value().encode()).digest()
    return secrets.token_bytes(32)


@lru_cache(maxsize=4096)
def project_salt(project_id: str) -> str:
    """cache_salt under this process's secret, computed once per project (the gateway asks on every call)."""
    return cache_salt(project_id)
