"""A database outage during settlement, then the gateways' re-sends: every record lands once, and windows,
free quota and Prometheus counters move once, also when the actor restarted meanwhile (issue 11). Before,
a failed write forgot the request ids it had already counted, and each re-send counted the call again.

The accounting actor's class runs in-process on a real SQLite database; no Ray cluster is needed."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from cluster.state.db import UsageRecord, session_scope
from serve_apps.contract import Settlement, hash_key
from tests.db.world import SECRET, Actor
from tests.db.world import tpm_used as _tpm_used

pytestmark = pytest.mark.db
def _call(actor, tokens: int) -> Settlement:
    answer = actor._admit((hash_key(SECRET), "tiny-chat", 5, 10))
    assert "error" not in answer, answer
    return Settlement(answer["reservation"], answer["record"] | {
        "request_id": uuid.uuid4().hex, "ts": time.time(), "prompt_tokens": tokens, "completion_tokens": 0,
        "status_code": 200})


def _tokens_counter(actor) -> float:
    text = actor.metrics_text(hash_key("no-admin")) or actor._metrics.exposition()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.decode().splitlines()
               if line.startswith("maas_tokens_total{") and 'kind="prompt"' in line)


def _rows(url: str) -> int:
    with session_scope(url) as session:
        return session.scalar(select(func.count()).select_from(UsageRecord))


def test_an_outage_then_resends_count_each_call_once(url, monkeypatch):
    actor = Actor(url)
    settlement = _call(actor, 100)
    real_write = actor._write

    def down(rows):
        raise OperationalError("INSERT", {}, Exception("database is down"))

    monkeypatch.setattr(actor, "_write", down)
    for _ in range(3):  # the gateway re-sends while the database is down
        with pytest.raises(OperationalError):
            asyncio.run(actor.settle_many([settlement]))
    monkeypatch.setattr(actor, "_write", real_write)
    asyncio.run(actor.settle_many([settlement]))  # back: lands
    asyncio.run(actor.settle_many([settlement]))  # an ack lost on the way: sent once more
    assert _rows(url) == 1
    assert actor._free_used[("p1", "tiny-chat")] == 100
    assert _tpm_used(actor) == 100
    assert _tokens_counter(actor) == 100


def test_a_resend_to_a_restarted_actor_of_a_stored_record_counts_nothing(url):
    actor = Actor(url)
    settlement = _call(actor, 300)
    asyncio.run(actor.settle_many([settlement]))  # stored; pretend the ack was lost with the actor
    restarted = Actor(url)
    assert restarted._free_used[("p1", "tiny-chat")] == 300 and _tpm_used(restarted) == 300  # rebuilt from SQL
    assert asyncio.run(restarted.settle_many([settlement])) == 0
    assert restarted._free_used[("p1", "tiny-chat")] == 300 and _tpm_used(restarted) == 300
    assert _rows(url) == 1 and _tokens_counter(restarted) == 0
    fresh = _call(restarted, 50)  # a call the restarted actor admitted counts as usual
    assert asyncio.run(restarted.settle_many([fresh])) == 1
    assert restarted._free_used[("p1", "tiny-chat")] == 350 and _rows(url) == 2
