"""The model application's configuration as Serve runs it, and the stream batcher."""

from __future__ import annotations

import asyncio
import time

import httpx

from serve_apps.model_app import FirstChunkBatcher
from tests.conftest import DASHBOARD_PORT


def test_engines_run_with_an_explicit_autoscaling_config(platform):
    apps = httpx.get(f"http://127.0.0.1:{DASHBOARD_PORT}/api/serve/applications/", timeout=30).json()["applications"]
    for app_name in ("tiny-chat", "all-minilm-l6-v2"):
        deployment = apps[app_name]["deployments"][f"engine-{app_name}"]
        autoscaling = deployment["deployment_config"]["autoscaling_config"]
        assert autoscaling["target_ongoing_requests"] == 16  # never ray.serve.llm's 1e9
        assert autoscaling["min_replicas"] >= 1 and autoscaling["max_replicas"] >= autoscaling["min_replicas"]
        assert deployment["deployment_config"]["ray_actor_options"]["num_cpus"] == 0


def test_first_chunks_leave_at_once_and_the_rest_in_batches():
    async def tokens():
        for i in range(12):
            await asyncio.sleep(0.004)
            yield i

    async def collect():
        start, batches = time.perf_counter(), []
        async for batch in FirstChunkBatcher(tokens(), interval_ms=20).stream():
            batches.append((time.perf_counter() - start, batch))
        return batches

    batches = asyncio.run(collect())
    assert [item for _, batch in batches for item in batch] == list(range(12))  # nothing lost or reordered
    assert batches[0][1] == [0] and batches[0][0] < 0.015  # the first chunk is not held back
    assert batches[1][1] == [1] and batches[1][0] < 0.025
    assert any(len(batch) > 1 for _, batch in batches[2:])  # later chunks travel together
    assert len(batches) < 12
