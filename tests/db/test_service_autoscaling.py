"""Autoscaled services in SQL: the bounds a create and a live change store, the product's rule that
`instances` is a fixed count only with autoscale off, the instances quota counting an autoscaled service's
maximum, and a decision of the policy becoming an event of the service with its signal."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from cluster.projects import quotas
from cluster.projects.schemas import QuotaSpec
from cluster.services import service as services
from cluster.services.lifecycle import AppState, Snapshot, app_name, decide, scaling_key
from cluster.services.scaling import ScalingEvents
from cluster.services.schemas import AutoscaleRequest, ServiceCreate
from cluster.state.db import Project, Service, ServiceEvent, session_scope
from serve_apps.errors import PlatformError

pytestmark = pytest.mark.db


@pytest.fixture
def url(migrated):
    with session_scope(migrated) as session:
        session.add(Project(id="p1", name="p1"))
    return migrated


def _create(url: str, name: str, **fields) -> Service:
    with session_scope(url) as session:
        view, _note = services.create(session, "p1", ServiceCreate(name=name, model="tiny-chat", **fields))
        return view


def test_autoscale_bounds_and_the_fixed_count_rule(url):
    view = _create(url, "auto", autoscale="llm", min_instances=0, max_instances=3, max_batch=4,
                   autoscale_options={"quiet_period_s": 15})
    assert (view.autoscale, view.min_instances, view.max_instances, view.max_batch) == ("llm", 0, 3, 4)
    assert view.autoscale_options == {"quiet_period_s": 15}
    assert _create(url, "default-min", autoscale="requests", max_instances=2).min_instances == 1
    fixed = _create(url, "fixed", instances=2)
    assert (fixed.autoscale, fixed.instances, fixed.min_instances, fixed.max_instances) == ("off", 2, None, None)
    for bad in ({"min_instances": 1, "max_instances": 2}, {"autoscale": "llm"},
                {"autoscale": "llm", "min_instances": 3, "max_instances": 2},
                {"autoscale": "requests", "max_instances": 2, "autoscale_options": {"quiet_period_s": 1}},
                {"autoscale": "llm", "max_instances": 2, "autoscale_options": {"quiet": 1}}):
        with pytest.raises(ValidationError):
            ServiceCreate(name="x", model="tiny-chat", **bad)
    with pytest.raises(ValidationError, match="fixed count of autoscale off"):
        AutoscaleRequest(autoscale="llm", max_instances=2, instances=2)


def test_the_instances_quota_counts_the_maximum_of_an_autoscaled_service(url):
    with session_scope(url) as session:
        quotas.set_quotas(session, "p1", QuotaSpec(instances=4))
    _create(url, "a", autoscale="llm", min_instances=0, max_instances=3)
    with pytest.raises(PlatformError, match=r"at most 4 engine instances over running services \(3 in use\)"):
        _create(url, "b", instances=2)
    _create(url, "b", instances=1)
    with session_scope(url) as session:  # raising a's maximum counts against the others, not itself
        a = session.query(Service).filter_by(name="a").one()
        with pytest.raises(PlatformError, match="at most 4 engine instances"):
            quotas.check_service(session, "p1", services.most_instances("llm", 1, 4), replacing=a)
        quotas.check_service(session, "p1", services.most_instances("off", 3, None), replacing=a)


def test_scale_is_refused_while_autoscaling(url):
    _create(url, "a", autoscale="llm", max_instances=2)
    with session_scope(url) as session:
        a = session.query(Service).filter_by(name="a").one()
        with pytest.raises(PlatformError, match="autoscales"):
            services.scale_changes(services.ScaleRequest(instances=2))(a)


def test_reconciler_keeps_an_autoscaled_service_running_while_the_autoscaler_moves_it(url):
    row = _create(url, "a", autoscale="llm", min_instances=1, max_instances=2)
    with session_scope(url) as session:
        snap = Snapshot.of(session.get(Service, row.id))
    name = app_name(snap.id, 1)
    key = scaling_key("llm", 1, 2, None)

    def app(running: int, target: int, scaling=key) -> AppState:
        return AppState(name=name, status="RUNNING", instances=1, scaling=scaling, target=target,
                        replicas=tuple((f"r{i}", "RUNNING") for i in range(running)))

    snap = Snapshot(**{**snap.__dict__, "status": "Running", "app_name": name, "running_since": 1})
    assert decide(snap, {name: app(1, 2)}, 10).status == "Running"  # a second replica is starting: no alarm
    assert decide(snap, {name: app(2, 2)}, 10).status == "Running"
    assert decide(snap, {name: app(0, 1)}, 10).status == "Concerning"  # below the minimum
    resized = decide(snap, {name: app(1, 1, scaling=scaling_key("off", 1, 1))}, 10)
    assert resized.deploy == name  # the deployed config differs from the row's: deploy the row's


def test_a_decision_becomes_an_event_and_the_last_scaling_of_the_service(url):
    row = _create(url, "a", autoscale="requests", min_instances=1, max_instances=2)
    name = app_name(row.id, 1)
    events = ScalingEvents()
    events._published = lambda: [(name, {"at": events.started, "from_replicas": 1, "to_replicas": 2,
                                         "reason": "panic: requests waiting for 1.0 s", "policy": "llm",
                                         "signals": {"waiting": 6, "running": 4, "kv_usage": 0.25}})]
    apps = {name: AppState(name=name, status="RUNNING", scaling=scaling_key("requests", 1, 2), target=2)}
    events.targets = {name: 1}  # Serve's requests policy moved it 1 -> 2 as well: both are told
    events.record(url, apps)
    with session_scope(url) as session:
        stored = session.get(Service, row.id)
        messages = [e.message for e in session.query(ServiceEvent).filter_by(service_id=row.id)
                    .order_by(ServiceEvent.id)]
        assert stored.last_scaling["policy"] == "requests" and stored.last_scaling["to_replicas"] == 2
    assert messages[-2] == ("Autoscaled 1 -> 2 (llm): panic: requests waiting for 1.0 s; waiting 6, running 4, "
                            "KV 25%")
    assert messages[-1].startswith("Autoscaled 1 -> 2 (requests): Serve's policy")
