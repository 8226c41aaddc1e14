"""/console (the console's address in the README and `maas up`) leads to the control plane's /api/console/:
Serve sends / to the gateway, so the gateway answers it, without a key."""

from __future__ import annotations

from starlette.testclient import TestClient

from serve_apps.gateway.app import app


def test_console_redirects_to_the_control_plane():
    with TestClient(app) as client:
        for path in ("/console", "/console/"):
            response = client.get(path, follow_redirects=False)
            assert response.status_code == 307 and response.headers["location"] == "/api/console/"
        assert client.get("/v1/models", follow_redirects=False).status_code == 400  # keys still guard the API
