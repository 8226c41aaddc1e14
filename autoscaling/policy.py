"""The `llm` autoscaling policy as a pure function: engine signals and the previous state in, a replica count,
the next state and the decision (with the signal that caused it) out. No Ray, no clock, no I/O.

An LLM engine batches: ongoing requests say little about whether callers wait. What does is a request
waiting in vLLM's queue (the batch is full) or KV-cache pressure (the engine will soon preempt). So:

- pressure = waiting requests (engine queues + Serve handle queues) above `waiting_threshold` per replica,
  or the fullest replica's KV usage at or over `kv_usage_threshold`;
- panic window: pressure in every sample for `panic_window_s` -> scale up now, to what the load that
  persisted through the window needs (per-replica capacity = what a saturated replica runs); shorter bursts
  are held;
- stable window: pressure that comes and goes but holds in at least half the samples of `stable_window_s`
  adds one replica;
- quiet period: no pressure for `quiet_period_s` -> scale down, never below what the peak load of the
  stable window needs (zero only when nothing ran or waited and `min_replicas` is 0);
- while a new replica is starting (target above running) the target is held, so one long engine start
  does not ratchet the count to the maximum, and the quiet period starts again once it is ready (a wake
  from zero whose caller gave up keeps its replica a whole quiet period for the caller's retry).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from autoscaling.config import LLMPolicyOptions

# Share of the stable window's samples under pressure that adds a replica (a short burst is far below it).
STABLE_SHARE = 0.5


@dataclass(frozen=True)
class Signals:
    """What the policy sees at one tick."""

    now: float
    running_replicas: int  # replicas serving now
    target_replicas: int  # the count Serve currently aims for
    waiting: float  # requests waiting in the engines' queues (sum over replicas)
    running: float  # requests the engines run (sum over replicas)
    kv_usage: float  # KV-cache usage of the fullest replica, 0-1
    queued: float = 0.0  # requests queued at Serve's handles, not yet on a replica
    ongoing: float = 0.0  # Serve's own count of requests in flight (running + queued)


@dataclass(frozen=True)
class Decision:
    """A change of the target: when, from -> to, why, and the signal values that caused it."""

    at: float
    from_replicas: int
    to_replicas: int
    reason: str
    signals: dict

    def as_dict(self) -> dict:
        return asdict(self)


def _pressure(waiting: float, kv: float, replicas: int, options: LLMPolicyOptions, running: float = 1.0) -> bool:
    """Waiting requests are pressure only where engines run something (a full batch) or none is up (a cold
    start): a request waiting on a replica that runs nothing waits on its start-up, not on capacity (maas up's
    readiness probes scaled an idle laptop's tiny-chat to 2)."""
    queueing = waiting > options.waiting_threshold * max(replicas, 1) and (running > 0 or replicas == 0)
    return queueing or kv >= options.kv_usage_threshold


def _needed(load: float, capacity: float | None, fallback: int) -> int:
    if not capacity:
        return fallback
    return math.ceil(load / capacity)


def decide(signals: Signals, state: dict, options: LLMPolicyOptions, min_replicas: int,
           max_replicas: int) -> tuple[int, dict, Decision | None]:
    """The target replica count, the policy state to keep, and the decision if the target changed."""
    now, current, target = signals.now, signals.running_replicas, signals.target_replicas
    waiting = signals.waiting + signals.queued
    horizon = max(options.stable_window_s, options.panic_window_s)
    samples = [s for s in state.get("samples", []) if s[0] > now - horizon]
    samples.append([now, waiting, signals.running, signals.kv_usage])
    pressed = _pressure(waiting, signals.kv_usage, current, options, signals.running)
    pressure_since = state.get("pressure_since") if pressed else None
    quiet_since = None if pressed else state.get("quiet_since")
    if pressed and pressure_since is None:
        pressure_since = now
    if not pressed and quiet_since is None:
        quiet_since = now
    capacity = state.get("capacity")
    if waiting > 0 and current > 0 and signals.running > 0:  # a queueing replica runs what it can hold
        capacity = max(capacity or 0.0, signals.running / current)

    want, reason = target, ""
    starting = target > current
    if starting and pressed:  # what the new replica does not absorb must persist a fresh window
        pressure_since = now
    if starting and not pressed:  # the quiet period counts from a ready replica: a caller told 503 while
        quiet_since = now         # it started (cold-start bound) finds it still there when they retry
    if pressed and not starting and now - pressure_since >= options.panic_window_s:
        window = [s for s in samples if s[0] >= pressure_since]
        load = min(s[1] + s[2] for s in window)
        want = max(target + 1, _needed(load, capacity, target + 1))
        reason = f"panic: requests waiting for {now - pressure_since:.1f} s"
    elif not pressed and not starting and samples[0][0] <= now - options.stable_window_s + 1e-9:
        pressed_share = sum(_pressure(s[1], s[3], current, options, s[2]) for s in samples) / len(samples)
        if pressed_share >= STABLE_SHARE:
            want = target + 1
            reason = f"stable: under pressure {pressed_share:.0%} of the last {options.stable_window_s:g} s"
    if (not pressed and not reason and not starting and quiet_since is not None
            and now - quiet_since >= options.quiet_period_s):
        peak = max(s[1] + s[2] for s in samples)
        if peak == 0 and signals.ongoing == 0:
            floor = 0
        else:
            floor = max(1, _needed(peak, capacity, min(target, max(current, 1))))
        if floor < target:
            want = floor
            reason = f"quiet for {now - quiet_since:.0f} s; peak load {peak:g} needs {floor}"

    want = min(max(want, min_replicas), max_replicas)
    if want != target:  # each change is judged afresh: pressure must persist a new window after it
        pressure_since = now if pressed else None
        quiet_since = None if pressed else now
        samples = samples[-1:]
    new_state = {"samples": samples, "pressure_since": pressure_since, "capacity": capacity,
                 "quiet_since": quiet_since}
    decision = None
    if want != target:
        decision = Decision(at=now, from_replicas=target, to_replicas=want, reason=reason or "bounds",
                            signals={"waiting": signals.waiting, "queued": signals.queued, "running": signals.running,
                                     "kv_usage": round(signals.kv_usage, 4), "ongoing": signals.ongoing,
                                     "replicas_running": current})
    return want, new_state, decision
