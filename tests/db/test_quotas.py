"""Per-project quotas: defaults from the settings, an admin's overrides, and the creates that must fit them
(services and their instances, my models, a job's workers, batch size and sequence length), also when
creates race."""

from __future__ import annotations

import pytest

from cluster.projects import quotas
from cluster.projects.schemas import QuotaSpec
from cluster.services import service as services
from cluster.services.schemas import ServiceCreate
from cluster.state.db import MyModel, Project, Service, session_scope
from serve_apps.errors import PlatformError
from tests.helpers import race

pytestmark = pytest.mark.db


@pytest.fixture
def url(migrated):
    url = migrated
    with session_scope(url) as session:
        session.add(Project(id="p1", name="p1"))
    return url


def _create(url: str, name: str, instances: int = 1) -> None:
    with session_scope(url) as session:
        services.create(session, "p1", ServiceCreate(name=name, model="tiny-chat", instances=instances))


def test_defaults_and_an_admins_overrides(url):
    with session_scope(url) as session:
        view = quotas.quotas(session, "p1")
        assert (view.services, view.instances, view.workers, view.models) == (10, 16, 4, 20)
        assert (view.batch_size, view.seq_len, view.overrides) == (1024, 8192, [])
        view = quotas.set_quotas(session, "p1", QuotaSpec(services=2, workers=8))
        assert (view.services, view.workers, view.instances, view.overrides) == (2, 8, 16, ["services", "workers"])
        view = quotas.set_quotas(session, "p1", QuotaSpec())  # back to the defaults
        assert (view.services, view.workers, view.overrides) == (10, 4, [])


def test_services_and_instances_must_fit(url):
    with session_scope(url) as session:
        quotas.set_quotas(session, "p1", QuotaSpec(services=3, instances=4))
    _create(url, "a", instances=2)
    with pytest.raises(PlatformError, match="at most 4 engine instances"):
        _create(url, "b", instances=3)
    _create(url, "b", instances=2)
    with pytest.raises(PlatformError, match="at most 4 engine instances"):
        _create(url, "c", instances=1)
    with session_scope(url) as session:  # a stopped service's instances free their place
        session.query(Service).filter_by(name="a").update({"desired": "stopped"})
    _create(url, "c", instances=2)
    with pytest.raises(PlatformError, match="at most 3 model services") as refused:
        _create(url, "d", instances=1)
    assert refused.value.status == 400 and refused.value.spec.code == "MaaS.0400"
    with session_scope(url) as session:  # scaling a running one counts the others, not itself
        b = session.query(Service).filter_by(name="b").one()
        quotas.check_service(session, "p1", 2, replacing=b)
        with pytest.raises(PlatformError, match="at most 4 engine instances"):
            quotas.check_service(session, "p1", 3, replacing=b)


def test_parallel_service_creates_never_pass_the_services_quota(url):
    with session_scope(url) as session:
        quotas.set_quotas(session, "p1", QuotaSpec(services=3))
    outcomes = race(8, lambda i: _create(url, f"s{i}"))
    assert sorted(outcomes) == ["MaaS.0400"] * 5 + ["ok"] * 3


def test_models_and_job_sizes_must_fit(url):
    with session_scope(url) as session:
        quotas.set_quotas(session, "p1", QuotaSpec(models=1, workers=2, batch_size=64, seq_len=512))
        quotas.check_model(session, "p1")
        session.add(MyModel(id="mdl-1", project_id="p1", name="m1", base_model="tiny-chat"))
        session.flush()
        with pytest.raises(PlatformError, match="at most 1 models"):
            quotas.check_model(session, "p1")
        quotas.check_job(session, "p1", workers=2, batch_size=64, seq_len=512)
        for sizes, what in (((3, 64, 512), "Ray Train workers"), ((2, 65, 512), "global batch"),
                            ((2, 64, 513), "sequence length")):
            with pytest.raises(PlatformError, match=what):
                quotas.check_job(session, "p1", *sizes)
