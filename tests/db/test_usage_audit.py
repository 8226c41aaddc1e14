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
from tests.db.test_settlement_once import SECRET, Actor, url  # noqa: F401  (the fixture)

pytestmark = pytest.mark.db


def test_engine_deltas_per_app_over_a_range(url):
    actor = Actor(url)
    t0 = time.time() - 600
    actor.engine_totals(EngineTotals("r1", "tiny-chat", 100, 1000, t0))  # before the range: the baseline
    actor.engine_totals(EngineTotals("r1", "tiny-chat", 150, 1400, t0 + 400))
    actor.engine_totals(EngineTotals("r2", "tiny-chat", 30, 70, t0 + 450))  # a replica started in the range
    actor.engine_totals(EngineTotals("r3", "svc-abc-g2", 5, 6, t0 + 500))
    assert actor.engine_deltas(t0 + 100) == {"tiny-chat": [80, 470], "svc-abc-g2": [5, 6]}
    assert actor.engine_deltas(t0 + 550) == {"tiny-chat": [0, 0], "svc-abc-g2": [0, 0]}


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
