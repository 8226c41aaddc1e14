"""Model services' lifecycle as data (spec §4.5, §4.6): which action is allowed from which status, the names
a service may have, and the reconciler's decisions (`decide`) from a service's row and what Serve reports.
No platform: the services on a real platform are tests/e2e/test_services.py."""

from __future__ import annotations

import pytest

from cluster.services.lifecycle import ALLOWED_FROM, Action, AppState, Snapshot, Status, app_name, check_action, decide
from cluster.services.schemas import ServiceCreate
from serve_apps.errors import PlatformError


def test_lifecycle_table_is_the_spec():
    starting = {"Pending", "Waiting", "Creating", "Initing", "Deploying", "Restarting"}
    assert {s.value for s in ALLOWED_FROM[Action.STOP]} == starting | {"Running", "Concerning"}
    assert {s.value for s in ALLOWED_FROM[Action.START]} == {"Failed", "Terminated"}
    for action in (Action.SCALE, Action.SET_QPS, Action.UPGRADE):
        assert {s.value for s in ALLOWED_FROM[action]} == {"Running", "Concerning"}
    assert {s.value for s in ALLOWED_FROM[Action.DELETE]} == {s.value for s in Status} - {"Deleting", "Deleted"}
    assert len(Status) == 18
    for status in Status:
        for action in Action:
            if status in ALLOWED_FROM[action]:
                check_action("s", status.value, action)
            else:
                with pytest.raises(PlatformError) as refused:
                    check_action("s", status.value, action)
                assert refused.value.status == 409
                assert refused.value.message.startswith(f"Cannot {action.value} the service 's' while it is "
                                                        f"{status.value}: {action.value} is allowed only when ")


@pytest.mark.parametrize("name", ["a", "服务", "A" * 64, "模型-服务_2", "x1-_"])
def test_names_the_product_allows(name):
    created = ServiceCreate(name=name, model="tiny-chat")
    assert (created.name, created.model, created.model_version, created.instances) == (name, "tiny-chat", "1", 1)


def _snap(**fields) -> Snapshot:
    base = dict(id="abc", name="s", model_id="tiny-chat", desired="running", status="Running", generation=1,
                instances=1, app_name=app_name("abc", 1), running_since=1000, run_seconds=0, auto_stop_s=None)
    return Snapshot(**(base | fields))


def _app(name: str, status: str = "RUNNING", instances: int = 1, running: int = 1, **kw) -> AppState:
    replicas = tuple((f"r{i}", "RUNNING") for i in range(running))
    return AppState(name=name, status=status, instances=instances, replicas=replicas, **kw)


G1, G2 = app_name("abc", 1), app_name("abc", 2)


def test_reconciler_deploys_a_queued_service_and_reports_serve_status():
    queued = decide(_snap(status="Pending", app_name="", running_since=None), {}, 2000)
    assert (queued.status, queued.deploy, queued.delete) == ("Deploying", G1, [])
    assert "running_since" not in queued.changes  # starting time is not counted toward auto-stop
    starting = decide(_snap(status="Deploying", app_name="", running_since=None),
                      {G1: _app(G1, "DEPLOYING", running=0)}, 2000)
    assert (starting.status, starting.deploy) == ("Deploying", None)
    running = decide(_snap(status="Deploying", app_name="", running_since=None), {G1: _app(G1)}, 2000)
    assert running.status == "Running" and running.changes == {"app_name": G1, "running_since": 2000}
    failed = decide(_snap(status="Deploying"), {G1: _app(G1, "DEPLOY_FAILED", running=0, message="boom")}, 2000)
    assert (failed.status, failed.reason, failed.delete) == ("Failed", "boom", [G1])


def test_reconciler_scales_in_place_and_upgrades_beside_the_serving_version():
    scale = decide(_snap(status="Scale", instances=2), {G1: _app(G1, instances=1)}, 2000)
    assert (scale.status, scale.deploy, scale.delete) == ("Scale", G1, [])  # same application, new count
    upgrading = decide(_snap(status="Upgrade", generation=2), {G1: _app(G1), G2: _app(G2, "DEPLOYING", running=0)},
                       2000)
    assert (upgrading.status, upgrading.deploy, upgrading.delete) == ("Upgrade", None, [])
    switched = decide(_snap(status="Upgrade", generation=2), {G1: _app(G1), G2: _app(G2)}, 2000)
    assert (switched.status, switched.changes, switched.delete) == ("Running", {"app_name": G2}, [G1])
    failed = decide(_snap(status="Upgrade", generation=2, model_version="2", previous_version="1"),
                    {G1: _app(G1), G2: _app(G2, "DEPLOY_FAILED", running=0)}, 2000)
    assert failed.status == "Concerning" and failed.delete == [G2]
    # back to what still serves: generation 1 with version 1 (a restart must not deploy the failed version)
    assert (failed.changes["generation"], failed.changes["model_version"]) == (1, "1")


def test_reconciler_brings_back_a_lost_application_and_auto_stops_on_running_time():
    lost = decide(_snap(), {}, 2000)
    assert (lost.status, lost.deploy) == ("Restarting", G1)
    assert lost.changes == {"running_since": None, "run_seconds": 1000}  # time restarting is not counted
    degraded = decide(_snap(instances=2), {G1: _app(G1, instances=2, running=1)}, 2000)
    assert degraded.status == "Concerning" and "1 of 2" in degraded.reason
    expired = decide(_snap(run_seconds=3000, running_since=1400, auto_stop_s=3600), {G1: _app(G1)}, 2000)
    assert (expired.status, expired.changes["desired"], expired.delete) == ("Terminating", "stopped", [G1])
    assert expired.changes["run_seconds"] == 3600
    not_yet = decide(_snap(run_seconds=3000, running_since=1401, auto_stop_s=3600), {G1: _app(G1)}, 2000)
    assert not_yet.status == "Running"
