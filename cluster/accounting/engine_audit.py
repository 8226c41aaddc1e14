"""The engines' own token counters, for `maas usage audit`: every engine replica pushes its cumulative counters
to accounting shard 0 every few seconds; kept in memory for the audit's ranges and in SQL, so a restart of the
actor keeps every range's baseline (without the samples before a restart, a range would count all a replica
ever processed)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque

from sqlalchemy import select

from cluster.state.db import EngineCounterSample, session_scope
from serve_apps.contract import EngineTotals

log = logging.getLogger("cluster.accounting.actor")
ENGINE_SAMPLES_KEPT_S = 25 * 3600  # engine token counters kept for `maas usage audit` (ranges up to a day)
MAX_UNWRITTEN_SAMPLES = 10_000  # engine samples held while the database is down (the oldest go first)


class EngineCounters:
    def __init__(self, url: str):
        self._url = url
        self._samples: dict[str, tuple[str, deque]] = {}  # replica -> (app, [(at, prompt, generation)])
        self.unwritten: list[dict] = []  # samples the database has not taken yet (bounded)
        self._pruned = 0.0

    async def record(self, totals: EngineTotals) -> None:
        """An engine replica's counters now: kept, and written with any a failed write left (the newest kept)."""
        totals = EngineTotals(*totals)
        self._keep(totals.replica, totals.app_name, totals.at, totals.prompt_tokens, totals.generation_tokens)
        rows = [*self.unwritten, totals._asdict()][-MAX_UNWRITTEN_SAMPLES:]  # the columns are EngineTotals' fields
        self.unwritten = []
        try:
            await asyncio.to_thread(self.write, rows, totals.at - ENGINE_SAMPLES_KEPT_S)
        except Exception as exc:  # noqa: BLE001  (the database is down: written with the next sample)
            self.unwritten = rows + self.unwritten
            log.warning("engine counter samples not written yet (%s)", type(exc).__name__)

    def _keep(self, replica: str, app_name: str, at: float, prompt: int, generation: int) -> None:
        _, samples = self._samples.setdefault(replica, (app_name, deque()))
        samples.append((at, prompt, generation))
        while len(samples) > 2 and samples[1][0] < at - ENGINE_SAMPLES_KEPT_S:
            samples.popleft()  # the oldest kept is the baseline of the longest range

    def write(self, rows: list[dict], older_than: float) -> None:
        with session_scope(self._url) as session:
            session.execute(EngineCounterSample.__table__.insert(), rows)
            if time.time() - self._pruned > 3600:
                session.execute(EngineCounterSample.__table__.delete().where(EngineCounterSample.at < older_than))
                self._pruned = time.time()

    def load(self) -> None:
        since = time.time() - ENGINE_SAMPLES_KEPT_S
        with session_scope(self._url) as session:
            for row in session.execute(select(EngineCounterSample.replica, EngineCounterSample.app_name,
                                              EngineCounterSample.at, EngineCounterSample.prompt_tokens,
                                              EngineCounterSample.generation_tokens)
                                       .where(EngineCounterSample.at >= since).order_by(EngineCounterSample.at)):
                self._keep(*row)

    def deltas(self, since: float) -> dict[str, list[int]]:
        """Tokens each engine application processed since `since`: per replica, its latest counters minus
        those it had at `since` (zero for a replica whose first report came later: the counters start at zero
        and a replica reports within seconds of its first step)."""
        deltas: dict[str, list[int]] = {}
        for app, samples in self._samples.values():
            base = next((s for s in reversed(samples) if s[0] <= since), (since, 0, 0))
            latest = samples[-1]
            total = deltas.setdefault(app, [0, 0])
            total[0] += latest[1] - base[1]
            total[1] += latest[2] - base[2]
        return deltas
