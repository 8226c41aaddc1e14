"""The gateway's wait for an engine replica (serve_apps/gateway/app.py `_replica`), on Ray Serve's own
`DeploymentResponseGenerator` with no cluster: its assignment future is what Serve's router completes when a
replica takes the call. Nobody completes it (a service at zero instances whose first one is still starting):
after MAAS_COLD_START_TIMEOUT_S the platform's 503, the call leaves Serve's queue, and the wait is recorded.
A replica that takes the call in time: no error, the wait recorded."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time

import pytest
from ray.serve._private.common import RequestMetadata
from ray.serve.handle import DeploymentResponseGenerator

from serve_apps.errors import PlatformError
from serve_apps.gateway.admission import Call
from serve_apps.gateway.app import _replica
from serve_apps.settings import plane_settings


@pytest.fixture
def bound(monkeypatch):
    monkeypatch.setenv("MAAS_COLD_START_TIMEOUT_S", "0.5")
    plane_settings.cache_clear()
    yield plane_settings().cold_start_timeout_s
    plane_settings.cache_clear()


def _response() -> tuple[DeploymentResponseGenerator, concurrent.futures.Future]:
    assignment = concurrent.futures.Future()  # Serve's router resolves it with the replica's result
    metadata = RequestMetadata(request_id="r", internal_request_id="r", call_method="chat", is_streaming=True)
    return DeploymentResponseGenerator(assignment, metadata, _is_router_running_in_separate_loop=True), assignment


def test_the_setting_defaults_under_the_openai_sdk_timeout():
    plane_settings.cache_clear()
    assert 0 < plane_settings().cold_start_timeout_s < 600


def test_no_replica_within_the_bound_is_the_platforms_503_and_leaves_serves_queue(bound):
    response, assignment = _response()
    call = Call({"project_id": "p"}, "", stream=True)
    started = time.perf_counter()
    with pytest.raises(PlatformError) as raised:
        asyncio.run(_replica(response, call))
    waited = time.perf_counter() - started
    assert raised.value.status == 503 and raised.value.body()["error_code"] == "MaaS.0503"
    assert raised.value.body()["error_msg"].startswith("The platform is starting or the model is not ready: no "
                                                       "instance of the model took the call within 0.5 s")
    assert bound <= waited < bound + 0.5
    assert assignment.cancelled() and response.cancelled()  # no replica runs it later for nobody
    record = call.result(503, "MaaS.0503")
    assert bound * 1000 <= record["replica_wait_ms"] < (bound + 0.5) * 1000


def test_a_replica_that_takes_the_call_in_time_ends_the_wait_and_the_wait_is_recorded(bound):
    response, assignment = _response()
    call = Call({"project_id": "p"}, "", stream=True)
    threading.Timer(0.2, assignment.set_result, args=[object()]).start()  # the first replica is ready
    asyncio.run(_replica(response, call))
    assert not response.cancelled()
    call.chunk_seen()
    record = call.result(200)
    assert 190 <= record["replica_wait_ms"] < bound * 1000  # slept 0.2 s; timers may read a few ms short
    assert record["ttft_ms"] >= record["replica_wait_ms"]  # the cold start is part of the time to first token
