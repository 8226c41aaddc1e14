"""Count limits hold under parallel creates: 30 live keys and 10 live endpoints per project, whatever the
number of requests racing for the last places (each create locks its project's row before counting)."""

from __future__ import annotations

import pytest

from cluster.endpoints import service as endpoints
from cluster.endpoints.schemas import EndpointCreate
from cluster.keys import service as keys
from cluster.keys.schemas import KeyCreate
from cluster.presets.service import register_builtin_models
from cluster.state.db import ApiKey, Endpoint, Preset, PresetGrant, Project, session_scope
from tests.helpers import race

pytestmark = pytest.mark.db


@pytest.fixture
def url(migrated):
    url = migrated
    with session_scope(url) as session:
        register_builtin_models(session, ["tiny-chat"])
        session.add(Project(id="p1", name="p1"))
        session.get(Preset, "tiny-chat").kind = "commercial"
        session.flush()
        session.add(PresetGrant(project_id="p1", model_id="tiny-chat"))
    return url


def test_parallel_key_creates_never_pass_the_30_key_limit(url):
    with session_scope(url) as session:
        for i in range(25):
            keys.create_key(session, "p1", KeyCreate(label=f"old{i}", description="x"))

    def create(i: int) -> None:
        with session_scope(url) as session:
            keys.create_key(session, "p1", KeyCreate(label=f"new{i}", description="x"))

    outcomes = race(12, create)
    assert sorted(outcomes) == ["MaaS.0400"] * 7 + ["ok"] * 5
    with session_scope(url) as session:
        assert session.query(ApiKey).filter_by(project_id="p1").count() == 30


def test_parallel_endpoint_creates_never_pass_the_10_endpoint_limit(url):
    def create(i: int) -> None:
        with session_scope(url) as session:
            endpoints.create_endpoint(session, "p1", EndpointCreate(name=f"ep{i}", service="tiny-chat"))

    outcomes = race(14, create)
    assert sorted(outcomes) == ["MaaS.0400"] * 4 + ["ok"] * 10
    with session_scope(url) as session:
        assert session.query(Endpoint).filter_by(project_id="p1").count() == 10
