"""How the control plane's background loops are doing (reconciler, job sync, webhook sender): the last pass
that went through and the last error, for `GET /api/v1/health`."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass


@dataclass
class LoopHealth:
    name: str
    last_success: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    errors: int = 0

    def ok(self) -> None:
        self.last_success = time.time()

    def failed(self, exc: BaseException | str, what: str = "") -> None:
        text = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
        self.last_error = (f"{what}: {text}" if what else text)[:500]
        self.last_error_at = time.time()
        self.errors += 1

    def view(self) -> dict:
        return {"last_success": self.last_success, "last_error": self.last_error,
                "last_error_at": self.last_error_at, "errors": self.errors}


_loops: dict[str, LoopHealth] = {}
_lock = threading.Lock()


def loop_health(name: str) -> LoopHealth:
    with _lock:
        return _loops.setdefault(name, LoopHealth(name))


def report() -> dict[str, dict]:
    with _lock:
        return {name: loop.view() for name, loop in sorted(_loops.items())}
