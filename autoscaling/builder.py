"""`ScalingSpec` -> the `autoscaling_config` of a Serve deployment (a plain dict, as `LLMConfig` takes it)."""

from __future__ import annotations

from typing import Any

from autoscaling.config import ScalingSpec

LLM_POLICY = "autoscaling.serve:LLMPolicy"


def serve_autoscaling_config(spec: ScalingSpec) -> dict[str, Any]:
    # Serve resets the target to initial_replicas on every config change: only a fixed count (or an explicit
    # choice) sets it, so that a live change of an autoscaled deployment keeps the replicas it has.
    initial = spec.min_replicas if spec.mode == "off" else spec.initial_replicas
    config: dict[str, Any] = {"min_replicas": spec.min_replicas, "max_replicas": spec.max_replicas,
                              "initial_replicas": initial, "target_ongoing_requests": spec.target_ongoing_requests}
    if spec.mode != "llm":
        return config  # off: min = max; requests: Serve's own policy and delays
    options = spec.llm
    config.update(
        # The policy owns the windows and the quiet period: Serve's delays would only add to them.
        upscale_delay_s=0.0, downscale_delay_s=0.0, downscale_to_zero_delay_s=0.0,
        # Replicas record and push engine metrics this often (Serve's default: every 10 s).
        metrics_interval_s=options.metrics_interval_s,
        look_back_period_s=max(2.0, 4 * options.metrics_interval_s),
        policy={"policy_function": LLM_POLICY, "policy_kwargs": {"options": options.model_dump()}},
    )
    return config


def policy_name(autoscaling_config: dict | None) -> str:
    """Which of the platform's modes a deployed autoscaling config is (read back from Serve's details)."""
    if not autoscaling_config:
        return "off"
    policy = autoscaling_config.get("policy") or {}
    if (policy.get("policy_function") if isinstance(policy, dict) else None) == LLM_POLICY:
        return "llm"
    if autoscaling_config.get("min_replicas") == autoscaling_config.get("max_replicas"):
        return "off"
    return "requests"
