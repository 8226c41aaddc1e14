"""A gateway replica that dies with calls in flight (issue 11): the engines' own counts settle those calls, once,
after the gateway's lease; a gateway that is alive always settles its own calls; a late settlement of the same
call counts nothing; a call whose gateway and engine both died is released after the reservation lease.

The accounting actor's class runs in-process on a real SQLite database; no Ray cluster is needed. The kill
itself, on the real platform: tests/e2e/test_usage_faults.py."""

from __future__ import annotations

import asyncio
import time

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from cluster.accounting import actor as actor_module
from cluster.accounting.actor import GATEWAY_LEASE_S, RESERVATION_LEASE_S
from cluster.state.db import UsageRecord, session_scope
from serve_apps.contract import AdmissionRequest, Settlement, WitnessReport, hash_key
from tests.db.world import SECRET, Actor
from tests.db.world import tpm_used as _tpm_used

pytestmark = pytest.mark.db


def _admit(actor, gateway: str = "gw-1") -> dict:
    [answer] = asyncio.run(actor.admit_many([AdmissionRequest(hash_key(SECRET), "tiny-chat", 5, 100)], gateway))
    assert "error" not in answer, answer
    return answer


def _rows(url: str) -> list[UsageRecord]:
    with session_scope(url) as session:
        rows = session.scalars(select(UsageRecord)).all()
        session.expunge_all()
        return rows


def test_a_dead_gateways_call_is_settled_once_from_the_engines_count(url):
    actor = Actor(url)
    answer = _admit(actor)
    reservation, started = answer["reservation"], time.time()
    asyncio.run(actor.witness_many([WitnessReport(reservation, 7, 40, started, True)]))
    now = time.time()
    assert asyncio.run(actor.sweep(now)) == 0  # the gateway said it is alive a moment ago: it settles its own
    assert _rows(url) == [] and reservation in actor._reservations
    assert asyncio.run(actor.sweep(now + GATEWAY_LEASE_S + 1)) == 1  # no heartbeat for the lease: dead
    [row] = _rows(url)
    assert (row.request_id, row.status_code, row.error_code) == (reservation, 502, "MaaS.0502")
    assert (row.prompt_tokens, row.completion_tokens, row.stream) == (7, 40, True)
    assert actor._free_used[("p1", "tiny-chat")] == 47
    assert _tpm_used(actor) == 47  # the reservation (5 + 100) was reconciled to the engine's count
    assert reservation not in actor._reservations and not actor._witnessed
    # The gateway was only slow after all: its settlement of the same call counts nothing and adds no row.
    late = Settlement(reservation, answer["record"] | {"request_id": reservation, "ts": started, "prompt_tokens": 7,
                                                       "completion_tokens": 40, "status_code": 200})
    assert asyncio.run(actor.settle_many([late])) == 0
    assert len(_rows(url)) == 1 and actor._free_used[("p1", "tiny-chat")] == 47
    assert asyncio.run(actor.sweep(now + 2 * GATEWAY_LEASE_S)) == 0


def test_a_living_gateway_settles_first_and_the_engines_report_is_dropped(url):
    actor = Actor(url)
    answer = _admit(actor)
    reservation = answer["reservation"]
    settlement = Settlement(reservation, answer["record"] | {"request_id": reservation, "ts": time.time(),
                                                             "prompt_tokens": 7, "completion_tokens": 40})
    assert asyncio.run(actor.settle_many([settlement])) == 1
    asyncio.run(actor.witness_many([WitnessReport(reservation, 7, 40, time.time(), True)]))
    assert not actor._witnessed  # nothing held for a settled call: memory stays bounded
    assert asyncio.run(actor.sweep(time.time() + GATEWAY_LEASE_S + 1)) == 0
    [row] = _rows(url)
    assert row.status_code == 200 and actor._free_used[("p1", "tiny-chat")] == 47


def test_a_call_whose_gateway_and_engine_both_died_is_released_after_the_lease(url):
    actor = Actor(url)
    answer = _admit(actor)
    assert _tpm_used(actor) == 105  # prompt estimate + max_tokens, reserved
    later = time.time() + GATEWAY_LEASE_S + 1
    assert asyncio.run(actor.sweep(later)) == 0  # the engine may still be generating: wait for its report
    assert asyncio.run(actor.sweep(time.time() + RESERVATION_LEASE_S + 1)) == 1
    [row] = _rows(url)
    assert (row.request_id, row.status_code, row.completion_tokens) == (answer["reservation"], 502, 0)
    assert _tpm_used(actor) == 0 and not actor._reservations


def test_a_database_outage_during_the_sweep_writes_the_record_later_and_counts_it_once(url, monkeypatch):
    actor = Actor(url)
    answer = _admit(actor)
    asyncio.run(actor.witness_many([WitnessReport(answer["reservation"], 3, 9, time.time(), False)]))
    real_write = actor._write
    monkeypatch.setattr(actor, "_write", lambda rows: (_ for _ in ()).throw(
        OperationalError("INSERT", {}, Exception("database is down"))))
    dead = time.time() + GATEWAY_LEASE_S + 1
    with pytest.raises(OperationalError):
        asyncio.run(actor.sweep(dead))
    assert _rows(url) == [] and len(actor._unswept) == 1
    monkeypatch.setattr(actor, "_write", real_write)
    asyncio.run(actor.sweep(dead + actor_module.SWEEP_INTERVAL_S))
    [row] = _rows(url)
    assert row.completion_tokens == 9 and actor._free_used[("p1", "tiny-chat")] == 12 and not actor._unswept


def test_a_gateway_asking_for_a_broken_calls_count_gets_it_as_soon_as_the_engine_reports(url):
    """The gateway's one question waits on the report itself (no polling): answered when it arrives, None at once
    for a call the actor does not hold, None after the wait when no report comes (a dead engine)."""
    actor = Actor(url)
    reservation, other = _admit(actor)["reservation"], _admit(actor)["reservation"]

    async def scenario():
        asking = asyncio.ensure_future(actor.witnessed(reservation, 5.0))
        await asyncio.sleep(0.1)
        assert not asking.done()
        started = time.monotonic()
        await actor.witness_many([WitnessReport(reservation, 7, 41, time.time(), True)])
        assert await asking == (7, 41)
        assert time.monotonic() - started < 0.5 and not actor._witness_waits
        started = time.monotonic()
        assert await actor.witnessed("not-held", 5.0) is None and time.monotonic() - started < 0.1
        started = time.monotonic()
        assert await actor.witnessed(other, 0.3) is None and 0.25 < time.monotonic() - started < 2
        assert not actor._witness_waits

    asyncio.run(scenario())
