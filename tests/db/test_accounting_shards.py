"""Accounting shards (MAAS_ACCOUNTING_SHARDS, issue 16): a project's calls are admitted and settled by its shard
whichever shard a gateway asks first, its limits stay exact over gateway replicas and keys, a restart of one
shard leaves the other shard's projects alone, engines' reports find the shard of their reservation, and one
shard behaves exactly as the single actor did.

The actor class runs in-process on a real SQLite database; the gateway's own routing (`AccountingShards`, the
`Settler`) and the engines' `UsageWitness` reach it through `Handle`, which gives an in-process object the
shape of a Ray actor handle (`handle.method.remote(...)`, awaitable). The real actors on a Ray cluster (named,
restarted by Ray): tests/e2e/test_accounting_shards_on_ray.py."""

from __future__ import annotations

import asyncio
import inspect
import time

import pytest
import ray
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from cluster.state.db import ApiKey, UsageRecord, session_scope
from serve_apps.contract import hash_key, reservation_shard
from serve_apps.gateway.admission import Call, Settler
from serve_apps.gateway.shards import AccountingShards, merge_expositions
from serve_apps.witness import UsageWitness
from tests.db.world import ALPHA, BETA, SHARD_KEYS, SHARD_RPM, Actor, build_shards, shard_request

pytestmark = pytest.mark.db
KEYS, RPM = SHARD_KEYS, SHARD_RPM


def _betas(windows) -> list[str]:
    return [key for key in windows._windows if key.endswith(":ep-pa") or f":{BETA}:" in key]


@pytest.fixture
def url(migrated):
    return build_shards(migrated)


class Handle:
    """An in-process actor as a gateway sees a Ray actor handle; `down` makes it answer like a dead actor."""

    def __init__(self, actor):
        self.actor, self.down, self.calls = actor, False, []

    def __getattr__(self, name):
        handle = self

        class Method:
            @staticmethod
            def remote(*args):
                async def call():
                    if handle.down:
                        raise ray.exceptions.RayActorError()
                    handle.calls.append(name)
                    result = getattr(handle.actor, name)(*args)
                    return await result if inspect.isawaitable(result) else result
                return asyncio.ensure_future(call())  # runs whether or not it is awaited, as a Ray call does

        return Method


def _shards(url: str) -> list[Handle]:
    return [Handle(Actor(url, shard, 2)) for shard in range(2)]


def _gateway(handles: list[Handle], name: str = "gw") -> AccountingShards:
    return AccountingShards(len(handles), name, getter=handles.__getitem__)


_request = shard_request


def _settle(settler: Settler, answer: dict, status: int = 200) -> None:
    call = Call(answer["record"], "127.0.0.1", answer.get("reservation"))
    call.prompt_tokens, call.completion_tokens = 5, 3
    settler.submit(call, status)


def _records(url: str) -> dict[str, int]:
    with session_scope(url) as session:
        rows = session.scalars(select(UsageRecord.project_id)).all()
    return {project: rows.count(project) for project in set(rows)}


def test_a_projects_calls_are_admitted_and_settled_by_its_shard_whichever_shard_is_asked_first(url):
    zero, one = _shards(url)
    assert zero.actor._admit(_request("sk-b1")) == {"shard": 1}  # shard 0 knows the key, admits nothing
    assert not zero.actor._reservations
    assert zero.actor._admit(_request("nobody")) == {"error": "ModelArts.81003"}

    async def run():
        gateway = _gateway([zero, one])
        settler = Settler(gateway.actor, gateway.settlement_shard)
        answers = {secret: await gateway.admit(_request(secret)) for secret in KEYS}
        for answer in answers.values():
            _settle(settler, answer)
        assert await settler.drain(5) == 0
        return gateway, answers

    gateway, answers = asyncio.run(run())
    assert all("error" not in a for a in answers.values()), answers
    assert reservation_shard(answers["sk-alpha"]["reservation"]) == 0
    assert len(answers["sk-alpha"]["reservation"]) == 32  # shard 0's ids are what the single actor gave
    assert {reservation_shard(answers[k]["reservation"]) for k in ("sk-b1", "sk-b2")} == {1}
    assert gateway.key_shard(hash_key("sk-b2")) == 1  # learned from the redirect
    assert zero.calls.count("settle_many") == 1 and one.calls.count("settle_many") == 1
    assert not zero.actor._reservations and not one.actor._reservations
    assert _records(url) == {ALPHA: 1, BETA: 2}
    # Each shard's windows hold only its own projects' calls.
    assert zero.actor._windows._windows and all(ALPHA in k for k in zero.actor._windows._windows)
    assert one.actor._windows._windows and _betas(one.actor._windows) == list(one.actor._windows._windows)


def test_a_limit_is_exact_over_two_gateway_replicas_and_two_keys_sent_to_different_shards_first(url):
    handles = _shards(url)

    async def run():
        first, second = _gateway(handles, "gw-1"), _gateway(handles, "gw-2")
        # Through the endpoint "ep" of BETA: sk-b1 and sk-b2 both call it (sk-b2's project has it too).
        calls = [first.admit(_request("sk-b1")) for _ in range(8)] + [second.admit(_request("sk-b2")) for _ in range(8)]
        calls += [first.admit(_request("sk-alpha")) for _ in range(3)]
        return await asyncio.gather(*calls)

    answers = asyncio.run(run())
    beta = answers[:16]
    assert sum("reservation" in a for a in beta) == RPM
    assert {a["error"] for a in beta if "error" in a} == {"ModelArts.81101"}
    assert all("reservation" in a for a in answers[16:])  # ALPHA's own endpoint: its own window


def test_a_restart_of_one_shard_touches_only_its_projects(url):
    zero, one = _shards(url)

    async def run():
        gateway = _gateway([zero, one])
        settler = Settler(gateway.actor, gateway.settlement_shard)
        for secret in ("sk-alpha", "sk-b1"):
            _settle(settler, await gateway.admit(_request(secret)))
        assert await settler.drain(5) == 0
        held = await gateway.admit(_request("sk-b1"))  # in flight on shard 1 across shard 0's restart
        before = await gateway.admit(_request("sk-alpha"))  # in flight on shard 0: its settlement waits
        zero.down = True
        with pytest.raises(ray.exceptions.RayActorError):
            await gateway.admit(_request("sk-alpha"))
        beta = [await gateway.admit(_request("sk-b2")) for _ in range(3)]  # shard 1 answers all along
        assert all("reservation" in a for a in beta)
        for answer in beta:
            _settle(settler, answer)
        _settle(settler, before)
        await asyncio.sleep(0.3)
        assert settler.pending == 1  # only shard 0's settlement waits
        zero.actor, zero.down = Actor(url, 0, 2), False  # what Ray does: __init__ again, from SQL
        assert await settler.drain(10) == 0
        return held

    held = asyncio.run(run())
    assert held["reservation"] in one.actor._reservations  # shard 1 kept its state
    assert one.actor._windows.used("ep-rpm:ep-pa", time.time()) == 5
    restarted = zero.actor
    assert restarted._windows.used("ep-rpm:ep-p-alpha", time.time()) == 2  # rebuilt from SQL (and the late one)
    assert not _betas(restarted._windows)  # never counts shard 1's
    assert _records(url) == {ALPHA: 2, BETA: 4}


def test_a_deleted_key_is_refused_on_the_next_call_although_the_gateway_knew_its_shard(url):
    handles = _shards(url)

    async def run():
        gateway = _gateway(handles)
        assert "reservation" in await gateway.admit(_request("sk-b2"))
        assert gateway.key_shard(hash_key("sk-b2")) == 1
        with session_scope(url) as session:
            session.delete(session.get(ApiKey, "sk-b2"))
        for handle in handles:  # what reload_accounting does: every shard
            handle.actor.reload()
        answer = await gateway.admit(_request("sk-b2"))
        return gateway, answer

    gateway, answer = asyncio.run(run())
    assert answer == {"error": "ModelArts.81003"}
    assert hash_key("sk-b2") not in gateway._key_shards


def test_engine_reports_go_to_their_reservations_shard_and_token_totals_to_shard_0_only(url):
    zero, one = _shards(url)

    async def run():
        gateway = _gateway([zero, one])
        answers = [await gateway.admit(_request(secret)) for secret in ("sk-alpha", "sk-b1")]
        witness = UsageWitness(actor_getter=[zero, one].__getitem__, replica="r1", app_name="app")
        for answer in answers:
            witness.report(answer["reservation"], 5, 3, time.time(), False)
        witness.count(10, 20)
        await asyncio.sleep(0.1)
        return answers

    alpha, beta = asyncio.run(run())
    assert list(zero.actor._witnessed) == [alpha["reservation"]]
    assert list(one.actor._witnessed) == [beta["reservation"]]
    assert zero.calls.count("engine_totals") == 1 and "engine_totals" not in one.calls
    assert zero.actor.engine_deltas(0) == {"app": [10, 20]} and one.actor.engine_deltas(0) == {}


def test_metrics_of_all_shards_are_one_exposition(url):
    zero, one = _shards(url)

    async def run():
        gateway = _gateway([zero, one])
        settler = Settler(gateway.actor, gateway.settlement_shard)
        for secret in KEYS:
            _settle(settler, await gateway.admit(_request(secret)))
        await settler.drain(5)
        return await gateway.metrics_text(None), await gateway.metrics_text(hash_key("not-the-admin"))

    merged, refused = asyncio.run(run())
    assert refused is None
    families = {f.name: f for f in text_string_to_metric_families(merged.decode())}
    requests: dict[str, float] = {}
    for sample in families["maas_requests"].samples:
        if sample.name.endswith("_total"):
            requests[sample.labels["project"]] = requests.get(sample.labels["project"], 0) + sample.value
    assert requests == {ALPHA: 1, BETA: 2}
    assert merged.decode().count("# TYPE maas_requests_total counter") == 1
    assert merge_expositions([zero.actor._metrics.exposition()]) == zero.actor._metrics.exposition()


def test_one_shard_is_the_single_actor(url):
    actor = Actor(url)  # what every existing caller creates
    assert actor.layout() == (0, 1)
    answers = [actor._admit(_request(secret)) for secret in KEYS]
    assert all(len(a["reservation"]) == 32 and "shard" not in a for a in answers)  # no redirect, plain ids
    gateway = AccountingShards(1, "gw")
    assert {gateway.key_shard(hash_key(secret)) for secret in [*KEYS, "nobody"]} == {0}
