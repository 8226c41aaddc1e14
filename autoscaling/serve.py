"""The `llm` policy in the shape Ray Serve calls it: `LLMPolicy(**policy_kwargs)(ctx) -> (replicas, state)`.

A thin adapter: it reads the engine metrics replicas push (`record_autoscaling_stats`, autoscaling/metrics.py)
from Serve's `AutoscalingContext`, calls the pure `autoscaling.policy.decide` and publishes each change to the
decision log. Serve applies its own factors, delays and bounds after it; the builder sets the delays to 0 so
that the windows here are the only ones (autoscaling/builder.py).
"""

from __future__ import annotations

from typing import Any

from autoscaling.config import LLMPolicyOptions
from autoscaling.decisions import Publisher
from autoscaling.metrics import KV_USAGE, RUNNING, WAITING
from autoscaling.policy import Signals, decide


def _latest(raw: dict, name: str) -> list[float]:
    return [series[-1].value for series in (raw.get(name) or {}).values() if series]


def signals_of(ctx) -> Signals:
    raw = ctx.raw_metrics or {}
    kv = _latest(raw, KV_USAGE)
    return Signals(now=ctx.current_time, running_replicas=ctx.current_num_replicas,
                   target_replicas=ctx.target_num_replicas, waiting=sum(_latest(raw, WAITING)),
                   running=sum(_latest(raw, RUNNING)), kv_usage=max(kv) if kv else 0.0,
                   queued=float(ctx.total_queued_requests or 0.0), ongoing=float(ctx.total_num_requests or 0.0))


class LLMPolicy:
    """Serve instantiates it once per deployment with `policy_kwargs` and calls it every control-loop tick."""

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        self.options = LLMPolicyOptions(**(options or {}))
        self.publisher = Publisher()

    def __call__(self, ctx) -> tuple[int, dict]:
        replicas, state, decision = decide(signals_of(ctx), ctx.policy_state or {}, self.options,
                                           ctx.capacity_adjusted_min_replicas, ctx.capacity_adjusted_max_replicas)
        if decision is not None:
            self.publisher.publish(ctx.app_name or "", {**decision.as_dict(), "policy": "llm"})
        return replicas, state
