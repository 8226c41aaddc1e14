"""Rate windows and the admission decision, as plain Python the accounting actor owns (one event loop,
so a check and its reservation can never interleave with another request's)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


class SlidingWindow:
    """Amounts added in the last `span` seconds. Entries can be corrected later (TPM reconciliation)."""

    def __init__(self, span: float):
        self.span = span
        self._entries: deque[list] = deque()  # [ts, amount, live]
        self.total = 0

    def _expire(self, now: float) -> None:
        while self._entries and self._entries[0][0] <= now - self.span:
            entry = self._entries.popleft()
            entry[2] = False
            self.total -= entry[1]

    def used(self, now: float) -> int:
        self._expire(now)
        return self.total

    def add(self, now: float, amount: int) -> list:
        entry = [now, amount, True]
        if self._entries and self._entries[-1][0] > now:  # an old record re-counted after a restart
            entry[0] = self._entries[-1][0]
        self._entries.append(entry)
        self.total += amount
        return entry

    def correct(self, entry: list, amount: int) -> None:
        if entry[2]:
            self.total += amount - entry[1]
        entry[1] = amount


@dataclass
class Limit:
    """One limit a request must pass: `window_key` names the shared window, `kind` says which error."""

    window_key: str
    kind: str  # rpm | tpm | qps
    value: int


@dataclass
class Reservation:
    """What an admitted request holds until it is settled."""

    entries: list[tuple[str, list]] = field(default_factory=list)  # (window key, entry) of token windows


class Windows:
    """All windows by key; `admit` checks every limit first and only then counts the request in each."""

    SPANS = {"rpm": 60.0, "tpm": 60.0, "qps": 1.0}

    def __init__(self):
        self._windows: dict[str, SlidingWindow] = {}

    def _window(self, key: str, kind: str) -> SlidingWindow:
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = SlidingWindow(self.SPANS[kind])
        return window

    def first_exceeded(self, limits: list[Limit], tokens: int, now: float) -> Limit | None:
        for limit in limits:
            need = tokens if limit.kind == "tpm" else 1
            if self._window(limit.window_key, limit.kind).used(now) + need > limit.value:
                return limit
        return None

    def count(self, limits: list[Limit], tokens: int, now: float) -> Reservation:
        reservation = Reservation()
        for limit in limits:
            entry = self._window(limit.window_key, limit.kind).add(now, tokens if limit.kind == "tpm" else 1)
            if limit.kind == "tpm":
                reservation.entries.append((limit.window_key, entry))
        return reservation

    def settle(self, reservation: Reservation, tokens: int) -> None:
        for key, entry in reservation.entries:
            self._windows[key].correct(entry, tokens)

    def used(self, key: str, now: float) -> int:
        window = self._windows.get(key)
        return window.used(now) if window else 0
