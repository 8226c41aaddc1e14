"""Placement per node type at the control plane: a service's `node_type` is checked (400 MaaS.0400 for a name
that is not a custom Ray resource), stored and shown, and reaches the engine's spec the reconciler deploys; a
tuning job's `node_type` and `spread_workers` reach its FinetuneConfig. The real routes of cluster.app on SQLite,
without Ray (tests/e2e/test_two_nodes.py places an engine and workers on a second node)."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from cluster.services import service as services
from cluster.services.lifecycle import Snapshot
from cluster.services.schemas import ServiceCreate
from cluster.settings import get_settings
from cluster.state.db import Service, session_scope

pytestmark = pytest.mark.db
ADMIN = "admin-node-placement"


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MAAS_HOME", str(tmp_path_factory.mktemp("node-placement")))
        env.delenv("MAAS_DATABASE_URL", raising=False)
        env.delenv("MAAS_STORAGE", raising=False)
        env.setenv("MAAS_ADMIN_KEY", ADMIN)
        get_settings.cache_clear()
        from cluster.app import app, prepare

        prepare(["tiny-chat"])
        yield TestClient(app, raise_server_exceptions=False, headers={"Authorization": f"Bearer {ADMIN}"})
    get_settings.cache_clear()


@pytest.mark.parametrize("bad, says", [
    ("CPU", "node_type 'CPU' is one of Ray's own resources"),
    ("maas gpu", "node_type must be a custom Ray resource name"),
    ("", "node_type must be a custom Ray resource name"),
])
def test_a_node_type_that_is_not_a_custom_resource_is_refused(api, bad, says):
    response = api.post("/api/v1/default/services", json={"name": "placed", "model": "tiny-chat",
                                                           "node_type": bad})
    assert response.status_code == 400 and response.json()["error_code"] == "MaaS.0400"
    assert response.json()["error_msg"].startswith("node_type: Value error, " + says)
    assert api.get("/api/v1/default/services/placed").status_code == 404


def test_a_service_keeps_its_node_type_and_its_engines_ask_for_it(migrated):
    from serve_apps.catalog import builtin
    from serve_apps.model_app import ModelServiceSpec, _placement

    with session_scope(migrated) as session:  # create's rules without the API (a create wakes Ray's actors)
        anywhere, _ = services.create(session, "default", ServiceCreate(name="anywhere", model="tiny-chat"))
        pinned, _ = services.create(session, "default", ServiceCreate(name="pinned", model="tiny-chat",
                                                                      node_type="maas-node-worker"))
    assert (anywhere.node_type, pinned.node_type) == (None, "maas-node-worker")
    with session_scope(migrated) as session:
        snap = Snapshot.of(session.get(Service, pinned.id))
        assert services.view(session.get(Service, pinned.id)).node_type == "maas-node-worker"
    assert snap.node_type == "maas-node-worker"  # what the reconciler's deploy hands the engine's spec
    spec = ModelServiceSpec(model=builtin("tiny-chat"), model_path="/m", app_name="a", node_type=snap.node_type)
    assert _placement(spec)["placement_group_config"] == {"bundles": [{"CPU": 1, "maas-node-worker": 0.01}]}


def test_a_tuning_job_refuses_a_bad_node_type():
    from pydantic import ValidationError

    from cluster.finetune.schemas import JobCreate

    job = dict(name="j", model="tiny-chat", type="lora", dataset="d", output_model="m")
    assert JobCreate(**job, node_type="maas-cpu", spread_workers=True).node_type == "maas-cpu"
    with pytest.raises(ValidationError, match="one of Ray's own resources"):
        JobCreate(**job, node_type="GPU")
