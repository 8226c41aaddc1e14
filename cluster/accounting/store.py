"""The accounting actor's SQL writes of usage records: a group commit of settled records (insert-or-ignore by
request id, one bad row never blocking the others), the folded refusals' upserts, the retention's deletes."""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DataError, IntegrityError, OperationalError, StatementError

from cluster.state.db import UsageRecord, get_engine, session_scope
from serve_apps.contract import UsageRecord as UsageRecordDict

log = logging.getLogger("cluster.accounting.actor")
FLUSH_DELAY_S = 0.002  # group commit: records arriving within this window share one transaction
RECORD_DEFAULTS = {"key_id": "", "service_type": "", "service_id": "", "endpoint_id": "", "model": "",
                   "prompt_tokens": 0, "completion_tokens": 0, "status_code": 200, "error_code": "",
                   "latency_ms": 0.0, "ttft_ms": None, "tpot_ms": None, "client_ip": "", "stream": False,
                   "playground": False, "replica_wait_ms": None}


def _stripped(row: dict) -> dict:
    """A refused record, kept for accounting: its counts and ids, free text cleared, marked as invalid."""
    return row | {"model": "", "client_ip": "", "error_code": "MaaS.0400"}


def row(record: UsageRecordDict) -> dict:
    """A usage_records row: defaults filled, free text cut to its column (PostgreSQL refuses longer)."""
    row = RECORD_DEFAULTS | record
    for column, size in (("model", 128), ("client_ip", 64), ("error_code", 64), ("service_id", 128)):
        row[column] = (row[column] or "").replace("\x00", "")[:size]  # PostgreSQL refuses NUL in text
    return row


def _insert(url: str):
    dialect = postgresql if get_engine(url).dialect.name == "postgresql" else sqlite
    return dialect.insert(UsageRecord)


def write_records(url: str, rows: list[dict]) -> None:
    """One transaction for the batch. If the database refuses the batch for what is in it (not because it
    is unreachable), each row goes alone, and a row refused alone is kept with its free text cleared and
    marked `MaaS.0400`: one bad record never blocks the others, and nothing is re-sent forever."""
    engine = get_engine(url)
    statement = _insert(url).on_conflict_do_nothing(index_elements=["request_id"])
    try:
        with engine.begin() as conn:
            conn.execute(statement, rows)
        return
    except (DataError, IntegrityError, StatementError) as exc:
        if isinstance(exc, OperationalError) or len(rows) == 0:
            raise
        log.warning("a batch of %d usage records was refused (%s); writing them one by one",
                    len(rows), type(exc).__name__)
    for row in rows:
        for attempt in (row, _stripped(row)):
            try:
                with engine.begin() as conn:
                    conn.execute(statement, [attempt])
                break
            except (DataError, IntegrityError, StatementError) as exc:
                if isinstance(exc, OperationalError):
                    raise
                log.warning("usage record %s refused: %s", row.get("request_id"), type(exc).__name__)


def add_folded(url: str, rows: list[dict]) -> None:
    """Each folded row inserted, or its count added to the row already stored for its group and minute."""
    insert = _insert(url)
    statement = insert.on_conflict_do_update(index_elements=["request_id"],
                                             set_={"calls": UsageRecord.calls + insert.excluded.calls})
    with get_engine(url).begin() as conn:
        conn.execute(statement, [row(r) | {"calls": r["calls"]} for r in rows])


def prune(url: str, older_than: float) -> None:
    """MAAS_USAGE_RETENTION_DAYS: usage records older than that go."""
    with session_scope(url) as session:
        deleted = session.execute(UsageRecord.__table__.delete().where(UsageRecord.ts < older_than)).rowcount
    if deleted:
        log.info("deleted %d usage records older than the retention", deleted)


def stored_ids(url: str, request_ids: list[str]) -> set[str]:
    with session_scope(url) as session:
        return set(session.scalars(select(UsageRecord.request_id).where(UsageRecord.request_id.in_(request_ids))))


class GroupCommit:
    """Records handed in within FLUSH_DELAY_S are written in one transaction by `write(rows)` (in a thread);
    each caller returns once its batch is durable, or raises what the write raised."""

    def __init__(self, write):
        self._write = write
        self._batch: list[dict] = []
        self._done: asyncio.Future | None = None

    async def __call__(self, records: list[dict]) -> None:
        if self._done is None:
            self._done = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().call_later(FLUSH_DELAY_S, lambda: asyncio.ensure_future(self._flush()))
        self._batch.extend(records)
        await asyncio.shield(self._done)

    async def _flush(self) -> None:
        rows, done = self._batch, self._done
        self._batch, self._done = [], None
        try:
            await asyncio.to_thread(self._write, rows)
            done.set_result(len(rows))
        except Exception as exc:  # the callers' settle calls fail; their gateways re-send
            log.exception("writing %d usage records failed", len(rows))
            done.set_exception(exc)
