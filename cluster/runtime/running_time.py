"""Running time, as auto-stop counts it (services and tuning jobs alike): only while the resource is in a
counted status, summed over every start."""

from __future__ import annotations

import time


def running_seconds(run_seconds: int | None, running_since: int | None, at: int | None = None) -> int:
    """Seconds counted so far: the closed periods plus the open one."""
    at = int(time.time()) if at is None else at
    return (run_seconds or 0) + (max(at - running_since, 0) if running_since is not None else 0)


def count_running(counted: bool, run_seconds: int | None, running_since: int | None, at: int) -> dict:
    """The column changes when a resource enters (`counted`) or leaves a counted status; {} otherwise."""
    if counted and running_since is None:
        return {"running_since": at}
    if not counted and running_since is not None:
        return {"running_since": None, "run_seconds": running_seconds(run_seconds, running_since, at)}
    return {}
