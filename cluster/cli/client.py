"""A small REST client of the control plane, used by the CLI (and handy in scripts)."""

from __future__ import annotations

import httpx

from cluster.settings import Settings


class ApiError(Exception):
    def __init__(self, status: int, body):
        self.status, self.body = status, body
        super().__init__(f"HTTP {status}: {body}")


def admin_key(settings: Settings) -> str | None:
    if settings.admin_key:
        return settings.admin_key
    try:
        return settings.credentials_file.read_text().strip() or None
    except OSError:
        return None


class ControlPlaneClient:
    def __init__(self, settings: Settings, key: str | None = None):
        self.http = httpx.Client(base_url=settings.base_url.rstrip("/") + "/api/v1", timeout=60,
                                 headers={"Authorization": f"Bearer {key or admin_key(settings) or ''}"})

    def call(self, method: str, path: str, **kwargs):
        response = self.http.request(method, path, **kwargs)
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = response.text
            raise ApiError(response.status_code, body)
        return response.json() if response.content else None
