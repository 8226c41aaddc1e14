"""Refused calls, exact in the statistics and bounded in cost.

A key that loops on refused calls (an unknown model, over its limit) would add one usage record per call: the
table would grow without bound and the settlement queue behind it could fill until every gateway answers 503.
So the first FIRST_ROWS refusals per minute of one group (project, key, service, status, code) are rows of their
own; the rest of that minute fold into one row per group whose `calls` counts them, written with an upsert
every few seconds (the actor's sweep). An actor killed between two flushes loses at most those seconds of
folded refusals: refusals only, never an answered call.
"""

from __future__ import annotations

import hashlib
from collections import deque

FIRST_ROWS = 10
REMEMBERED = 200_000  # request ids of folded records, so a re-sent one is not written as a row of its own

GROUP = ("project_id", "key_id", "service_type", "service_id", "endpoint_id", "status_code", "error_code")


def is_refusal(reservation: str | None, row: dict) -> bool:
    """Refused before any engine ran (no reservation) with a 4xx: what a caller can repeat at no cost."""
    return reservation is None and 400 <= row["status_code"] < 500


class RefusalFolder:
    def __init__(self, first_rows: int = FIRST_ROWS):
        self._first_rows = first_rows
        self._seen: dict[tuple, list[int]] = {}  # group -> [minute, refusals seen in it]
        self._pending: dict[tuple, dict] = {}  # (group, minute) -> the folded row's calls not written yet
        self._folded: set[str] = set()
        self._folded_order: deque[str] = deque()

    def folded(self, request_id: str) -> bool:
        return request_id in self._folded

    def take(self, row: dict) -> bool:
        """True: write the row as it is. False: it was folded into its group's row of the minute."""
        group = tuple(row[name] for name in GROUP)
        minute = int(row["ts"] // 60)
        seen = self._seen.get(group)
        if seen is None or seen[0] != minute:
            seen = self._seen[group] = [minute, 0]
        seen[1] += 1
        if seen[1] <= self._first_rows:
            return True
        folded = self._pending.get((group, minute))
        if folded is None:
            digest = hashlib.sha256(repr((group, minute)).encode()).hexdigest()[:40]
            self._pending[(group, minute)] = row | {"request_id": f"refusals-{digest}", "ts": minute * 60.0,
                                                    "model": "", "client_ip": "", "calls": 1, "latency_ms": 0.0}
        else:
            folded["calls"] += 1
        self._folded.add(row["request_id"])
        self._folded_order.append(row["request_id"])
        if len(self._folded_order) > REMEMBERED:
            self._folded.discard(self._folded_order.popleft())
        return False

    def due(self, now: float) -> list[dict]:
        """The folded rows' counts to add (and forget); old minutes' groups are forgotten too."""
        rows, self._pending = list(self._pending.values()), {}
        current = int(now // 60)
        self._seen = {group: seen for group, seen in self._seen.items() if seen[0] >= current - 1}
        return rows

    def put_back(self, rows: list[dict]) -> None:
        """Counts a failed write did not store: added to what folded since."""
        for row in rows:
            key = (tuple(row[name] for name in GROUP), int(row["ts"] // 60))
            pending = self._pending.get(key)
            if pending is None:
                self._pending[key] = row
            else:
                pending["calls"] += row["calls"]
