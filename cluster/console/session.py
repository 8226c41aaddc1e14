"""Console sessions: who is logged in, kept in this process; the browser holds only a signed session id.

The cookie is HttpOnly, SameSite=Strict and scoped to the console's path; it carries a random session id
signed with itsdangerous (a per-process secret: a restart of the control plane ends every session). The
secret key the user logged in with stays here, in memory, because the playground calls the gateway with it;
it never reaches the browser again. Every form carries the session's CSRF token (checked on every POST).
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, field

from itsdangerous import BadSignature, URLSafeTimedSerializer

COOKIE = "maas_console"
LOGIN_COOKIE = "maas_console_login"  # the login form's CSRF token (double submit), before any session
MAX_AGE_S = 8 * 3600


@dataclass
class Viewer:
    """A logged-in user: the admin, or a project's API key (`project` set)."""

    secret: str
    admin: bool
    project: str | None
    key_label: str = ""
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    created: float = field(default_factory=time.time)

    @property
    def home_project(self) -> str:
        return self.project or "default"


class Sessions:
    def __init__(self) -> None:
        self._signer = URLSafeTimedSerializer(secrets.token_bytes(32), salt="maas-console")
        self._by_id: dict[str, Viewer] = {}
        self._lock = threading.Lock()

    def create(self, viewer: Viewer) -> str:
        """The cookie value of a new session."""
        session_id = secrets.token_urlsafe(32)
        with self._lock:
            self._expire()
            self._by_id[session_id] = viewer
        return self._signer.dumps(session_id)

    def get(self, cookie: str | None) -> Viewer | None:
        if not cookie:
            return None
        try:
            session_id = self._signer.loads(cookie, max_age=MAX_AGE_S)
        except BadSignature:
            return None
        with self._lock:
            return self._by_id.get(session_id)

    def drop(self, cookie: str | None) -> None:
        try:
            session_id = self._signer.loads(cookie or "", max_age=MAX_AGE_S)
        except BadSignature:
            return
        with self._lock:
            self._by_id.pop(session_id, None)

    def sign(self, value: str) -> str:
        return self._signer.dumps(value)

    def unsign(self, value: str | None) -> str | None:
        try:
            return self._signer.loads(value or "", max_age=3600)
        except BadSignature:
            return None

    def _expire(self) -> None:
        cutoff = time.time() - MAX_AGE_S
        for session_id in [s for s, v in self._by_id.items() if v.created < cutoff]:
            del self._by_id[session_id]


def same(a: str | None, b: str | None) -> bool:
    return bool(a) and bool(b) and secrets.compare_digest(a, b)
