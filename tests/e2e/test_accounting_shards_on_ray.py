"""Accounting shards as real Ray actors (MAAS_ACCOUNTING_SHARDS, issue 16): the named, detached actors
`get_or_create` makes, found again by the gateway's client, and a killed shard re-created by Ray while the other
answers. A Ray cluster of this test's own, started in-process (the session platform's actors have the same names);
the shards' rules with the actor class in-process, no Ray: tests/db/test_accounting_shards.py."""

from __future__ import annotations

import asyncio
import time

import pytest
import ray

from cluster.state.db import migrate
from serve_apps.contract import reservation_shard
from serve_apps.gateway.shards import AccountingShards
from tests.db.world import SHARD_KEYS, build_shards, shard_request


@pytest.fixture
def url(tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'maas.db'}"
    migrate(url)
    return build_shards(url)


@pytest.fixture
def local_ray():
    ray.shutdown()  # an earlier test's Ray call may have connected this process to a Ray of its own
    ray.init(address="local", num_cpus=1, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield
    ray.shutdown()


def test_two_real_shards_on_a_ray_cluster_and_one_killed(url, local_ray):
    """The named actors Ray creates and restarts: the gateway's client finds both, a killed shard 0 is
    re-created by Ray (max_restarts=-1) and admits again, while shard 1 answers throughout."""
    from cluster.accounting.actor import get_or_create

    zero, one = get_or_create(url, 2)
    assert ray.get([zero.layout.remote(), one.layout.remote()]) == [(0, 2), (1, 2)]
    with pytest.raises(RuntimeError, match="MAAS_ACCOUNTING_SHARDS is 3"):
        get_or_create(url, 3)

    async def run():
        gateway = AccountingShards(2, "gw")
        first = [await gateway.admit(shard_request(secret)) for secret in SHARD_KEYS]
        ray.kill(zero, no_restart=False)
        beta = await gateway.admit(shard_request("sk-b2"))  # shard 1, while shard 0 restarts
        deadline = time.time() + 60
        while True:
            try:
                alpha = await gateway.admit(shard_request("sk-alpha"))
                break
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
                assert time.time() < deadline
                await asyncio.sleep(0.5)
        return first, beta, alpha

    first, beta, alpha = asyncio.run(run())
    assert [reservation_shard(a["reservation"]) for a in first] == [0, 1, 1]
    assert reservation_shard(beta["reservation"]) == 1 and reservation_shard(alpha["reservation"]) == 0
    assert ray.get(one.usage_in_window.remote("ep-rpm:ep-pa")) == 3  # shard 1 never restarted
