"""The control plane's request bodies refuse an unknown field (400 MaaS.0400, and nothing changes) instead of
dropping it: the real routes of cluster.app with the admin key, on SQLite, without Ray (a refused body never
reaches a route's work). The same through the running platform: tests/e2e/test_keys.py, test_endpoints.py,
test_accounting.py."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from starlette.testclient import TestClient

from cluster.settings import get_settings
from cluster.state.db import get_engine

ADMIN = "admin-strict-bodies"
EMBED = "all-minilm-l6-v2"
UNKNOWN = {"error_code": "MaaS.0400", "error_msg": "color: Extra inputs are not permitted"}


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MAAS_HOME", str(tmp_path_factory.mktemp("strict-bodies")))
        env.delenv("MAAS_DATABASE_URL", raising=False)
        env.setenv("MAAS_ADMIN_KEY", ADMIN)
        get_settings.cache_clear()
        from cluster.app import app, prepare

        prepare(["tiny-chat", EMBED])
        yield TestClient(app, raise_server_exceptions=False, headers={"Authorization": f"Bearer {ADMIN}"})
    get_settings.cache_clear()


def _dump() -> dict:
    """Every row of every table, as text."""
    engine = get_engine(get_settings().database_url)
    with engine.connect() as conn:
        return {table: sorted(map(str, conn.execute(sa.text(f"SELECT * FROM {table}"))))
                for table in sa.inspect(engine).get_table_names()}


@pytest.mark.parametrize("method, path, body", [
    ("POST", "/api/v1/default/keys", {"label": "strict", "description": "d"}),
    ("POST", "/api/v1/projects", {"id": "strict", "name": "Strict"}),
    ("PUT", f"/api/v1/presets/{EMBED}", {"kind": "commercial", "rpm": 7}),
    ("POST", f"/api/v1/presets/{EMBED}/freeze", {"project_id": "default"}),
    ("POST", "/api/v1/default/presets/activate", {"models": [EMBED]}),
    ("POST", "/api/v1/default/endpoints", {"name": "strict", "service": EMBED}),
    ("PATCH", "/api/v1/default/endpoints/strict", {"rpm": 7}),
    ("POST", "/api/v1/default/services", {"name": "strict", "model": "tiny-chat"}),
])
def test_an_unknown_field_is_refused_and_changes_nothing(api, method, path, body):
    before = _dump()
    response = api.request(method, path, json=body | {"color": "red"})
    assert (response.status_code, response.json()) == (400, UNKNOWN)
    assert _dump() == before
