"""Refused calls are exact in the statistics and bounded in cost (issue 26, item 5): a key looping on refusals
adds at most FIRST_ROWS rows plus one folded row per minute and group, and every refusal is still counted."""

from __future__ import annotations

import asyncio
import time
import uuid

from sqlalchemy import func, select

from cluster.accounting.refusals import FIRST_ROWS
from cluster.state.db import UsageRecord, session_scope
from cluster.usage import stats
from cluster.usage.schemas import UsageQuery
from serve_apps.contract import hash_key
from tests.db.world import SECRET, Actor


def _refused(actor, model: str) -> tuple:
    answer = actor._admit((hash_key(SECRET), model, 5, 10))
    record = answer["record"] | {"request_id": uuid.uuid4().hex, "ts": time.time(), "prompt_tokens": 0,
                                 "completion_tokens": 0, "status_code": 404, "error_code": "NotFoundError"}
    return None, record


def test_a_loop_of_refusals_adds_bounded_rows_and_is_counted_exactly(url):
    actor = Actor(url)
    settlements = [_refused(actor, f"no-such-model-{i}") for i in range(300)]
    for start in range(0, 300, 50):
        asyncio.run(actor.settle_many(settlements[start:start + 50]))
    asyncio.run(actor.settle_many(settlements[:100]))  # re-sent (acks lost): counted once, no new rows
    asyncio.run(actor.sweep(time.time()))
    asyncio.run(actor.sweep(time.time()))  # nothing left to add: the count stays
    with session_scope(url) as session:
        rows = session.scalar(select(func.count()).select_from(UsageRecord))
        calls = session.scalar(select(func.sum(UsageRecord.calls)))
        summary = stats.summary(session, UsageQuery(project_id="p1"))
        failures = stats.failures(session, UsageQuery(project_id="p1"))
    minutes = 1 if int(settlements[0][1]["ts"] // 60) == int(settlements[-1][1]["ts"] // 60) else 2
    assert rows <= minutes * (FIRST_ROWS + 1)
    assert calls == 300
    assert summary.totals.calls == 300 and summary.totals.failures == 300
    assert sum(group.count for group in failures.groups) == 300


def test_refusals_past_the_first_rows_in_a_minute_of_an_answered_call_stay_rows_of_their_own(url):
    """Answered calls (a reservation) are never folded, however many."""
    actor = Actor(url)
    for _ in range(FIRST_ROWS * 2):
        answer = actor._admit((hash_key(SECRET), "tiny-chat", 5, 10))
        record = answer["record"] | {"request_id": uuid.uuid4().hex, "ts": time.time(), "prompt_tokens": 5,
                                     "completion_tokens": 1, "status_code": 200}
        asyncio.run(actor.settle_many([(answer["reservation"], record)]))
    with session_scope(url) as session:
        assert session.scalar(select(func.count()).select_from(UsageRecord)) == FIRST_ROWS * 2


def test_records_older_than_the_retention_are_deleted(url):
    actor = Actor(url, retention_days=1)
    old, new = _refused(actor, "x"), _refused(actor, "y")
    old[1]["ts"] = time.time() - 2 * 86400
    asyncio.run(actor.settle_many([old, new]))
    asyncio.run(actor.sweep(time.time()))
    with session_scope(url) as session:
        assert set(session.scalars(select(UsageRecord.request_id))) == {new[1]["request_id"]}
