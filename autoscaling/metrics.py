"""The metrics a model replica reports to Serve's autoscaler (`record_autoscaling_stats`), and the small
store that keeps the engine's latest scheduler numbers between two reports. No Ray, no vLLM here.
"""

from __future__ import annotations

import time

WAITING = "vllm_waiting"  # requests in the engine's queue (the running batch is full)
RUNNING = "vllm_running"  # requests in the engine's running batch
KV_USAGE = "vllm_kv_usage"  # fraction of the KV cache in use, 0-1
METRICS = (WAITING, RUNNING, KV_USAGE)

# vLLM sends scheduler stats with every engine step; none for this long means the engine has nothing to run.
IDLE_AFTER_S = 2.0


class EngineStats:
    """The latest scheduler stats of one engine, as `record_autoscaling_stats` reports them."""

    def __init__(self) -> None:
        self.waiting = 0.0
        self.running = 0.0
        self.kv_usage = 0.0
        self.at = 0.0

    def record(self, waiting: float, running: float, kv_usage: float, at: float | None = None) -> None:
        self.waiting, self.running, self.kv_usage = float(waiting), float(running), float(kv_usage)
        self.at = time.monotonic() if at is None else at

    def report(self, now: float | None = None) -> dict[str, float]:
        now = time.monotonic() if now is None else now
        if now - self.at > IDLE_AFTER_S:  # no step since: nothing waits or runs
            return {WAITING: 0.0, RUNNING: 0.0, KV_USAGE: 0.0}
        return {WAITING: self.waiting, RUNNING: self.running, KV_USAGE: self.kv_usage}
