"""`maas usage audit` (issue 11): the engines' counters as the actor keeps them (per replica, deltas over a
range) and the comparison with the ledger, grouped by the model an engine serves. Real actor class and
database in-process; the audit after real faults: tests/e2e/test_usage_faults.py."""

from __future__ import annotations

import asyncio
import time

import pytest

from cluster.state.db import ServedModel, session_scope
from cluster.usage.audit import audit
from serve_apps.contract import AdmissionRequest, EngineTotals, Settlement, hash_key
from tests.db.world import SECRET, Actor

pytestmark = pytest.mark.db


def _samples(actor, t0: float) -> None:
    for totals in (EngineTotals("r1", "tiny-chat", 100, 1000, t0),  # before the range: the baseline
                   EngineTotals("r1", "tiny-chat", 150, 1400, t0 + 400),
                   EngineTotals("r2", "tiny-chat", 30, 70, t0 + 450),  # a replica started in the range
                   EngineTotals("r3", "svc-abc-g2", 5, 6, t0 + 500)):
        asyncio.run(actor.engine_totals(totals))


def test_engine_deltas_per_app_over_a_range(url):
    actor = Actor(url)
    t0 = time.time() - 600
    _samples(actor, t0)
    assert actor.engine_deltas(t0 + 100) == {"tiny-chat": [80, 470], "svc-abc-g2": [5, 6]}
    assert actor.engine_deltas(t0 + 550) == {"tiny-chat": [0, 0], "svc-abc-g2": [0, 0]}


def test_a_restarted_actor_keeps_the_baselines_of_a_range(url):
    """benchmarks/faults.py found it: the samples lived in the actor's memory only, so after a restart a
    replica's next (cumulative) sample counted everything it ever processed (10,806 tokens for 3,200 billed)."""
    t0 = time.time() - 600
    _samples(Actor(url), t0)
    restarted = Actor(url)
    assert restarted.engine_deltas(t0 + 100) == {"tiny-chat": [80, 470], "svc-abc-g2": [5, 6]}
    asyncio.run(restarted.engine_totals(EngineTotals("r1", "tiny-chat", 160, 1500, t0 + 560)))
    assert restarted.engine_deltas(t0 + 550) == {"tiny-chat": [10, 100], "svc-abc-g2": [0, 0]}


def test_engine_samples_wait_for_the_database(url, monkeypatch):
    actor = Actor(url)
    t0 = time.time() - 60
    real = actor._engines.write

    def down(rows, older_than):
        raise OSError("database unreachable")
    monkeypatch.setattr(actor._engines, "write", down)
    asyncio.run(actor.engine_totals(EngineTotals("r1", "tiny-chat", 1, 10, t0)))
    assert actor.engine_deltas(t0 - 1) == {"tiny-chat": [1, 10]} and len(actor._engines.unwritten) == 1
    monkeypatch.setattr(actor._engines, "write", real)
    asyncio.run(actor.engine_totals(EngineTotals("r1", "tiny-chat", 2, 30, t0 + 5)))
    assert actor._engines.unwritten == []
    assert Actor(url).engine_deltas(t0 - 1) == {"tiny-chat": [2, 30]}


def test_the_audit_is_zero_when_the_ledger_billed_what_the_engines_processed(url):
    actor = Actor(url)
    since = time.time() - 1
    calls = []
    for prompt, completion in ((12, 40), (9, 3)):
        [answer] = asyncio.run(actor.admit_many([AdmissionRequest(hash_key(SECRET), "tiny-chat", 5, 50)], "gw"))
        calls.append(Settlement(answer["reservation"], answer["record"] | {
            "request_id": answer["reservation"], "ts": time.time(), "prompt_tokens": prompt,
            "completion_tokens": completion}))
    asyncio.run(actor.settle_many(calls))
    with session_scope(url) as session:
        app = session.get(ServedModel, "tiny-chat").app_name
        [row] = [r for r in audit(session, since, {app: [21, 43]}) if r.model == "tiny-chat"]
        assert (row.calls, row.prompt_difference, row.completion_difference) == (2, 0, 0)
        [row] = [r for r in audit(session, since, {app: [21, 50]}) if r.model == "tiny-chat"]
        assert row.completion_difference == -7  # 7 generated tokens nobody was billed for
        [gone] = [r for r in audit(session, since, {app: [21, 43], "svc-x1-g1": [4, 4]}) if r.model == "x1"]
        assert (gone.calls, gone.prompt_difference) == (0, -4)  # an engine whose calls are not in the ledger
