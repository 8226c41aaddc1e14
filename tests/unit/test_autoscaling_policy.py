"""The `llm` autoscaling policy (autoscaling/policy.py) on recorded metric sequences, its Serve adapter on a real
`AutoscalingContext`, the builder's Serve config, and the replica's engine stats. No Ray cluster, no engine."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from autoscaling.builder import LLM_POLICY, policy_name, serve_autoscaling_config
from autoscaling.config import LLMPolicyOptions, ScalingSpec
from autoscaling.metrics import IDLE_AFTER_S, KV_USAGE, RUNNING, WAITING, EngineStats
from autoscaling.policy import Signals, decide

OPTIONS = LLMPolicyOptions(panic_window_s=1.0, stable_window_s=10.0, quiet_period_s=20.0)
TICK = 0.1  # Serve's control loop period


def run(sequence, options=OPTIONS, min_replicas=1, max_replicas=3, replicas=1, start_delay=0.0):
    """Play `sequence` of (seconds, waiting, running, kv) steps at the control loop's rate; a new replica is
    running `start_delay` seconds after a scale-up. Returns the decisions and the final target."""
    state, target, running_replicas, now, decisions, ready_at = {}, replicas, replicas, 0.0, [], None
    for seconds, waiting, running, kv in sequence:
        for _ in range(round(seconds / TICK)):
            now += TICK
            if ready_at is not None and now >= ready_at:
                running_replicas, ready_at = target, None
            if target < running_replicas:
                running_replicas = target
            signals = Signals(now=now, running_replicas=running_replicas, target_replicas=target, waiting=waiting,
                              running=running, kv_usage=kv, ongoing=waiting + running)
            want, state, decision = decide(signals, state, options, min_replicas, max_replicas)
            if decision is not None:
                decisions.append(decision)
                if want > target:
                    ready_at = now + start_delay
            target = want
    return decisions, target


def test_scales_up_within_the_panic_window_when_requests_wait():
    decisions, target = run([(5, 0, 2, 0.1), (3, 6, 4, 0.2)])
    assert target == 3 and len(decisions) == 1  # 10 requests at 4 per saturated replica need 3
    up = decisions[0]
    assert (up.from_replicas, up.to_replicas) == (1, 3)
    assert up.at - (5.0 + TICK) == pytest.approx(OPTIONS.panic_window_s, abs=0.15)
    assert up.reason.startswith("panic") and up.signals["waiting"] == 6 and up.signals["running"] == 4


def test_holds_on_a_burst_shorter_than_the_panic_window():
    decisions, target = run([(5, 0, 2, 0.1), (0.6, 5, 4, 0.1), (5, 0, 4, 0.1), (0.5, 3, 4, 0.1), (5, 0, 1, 0.1)])
    assert decisions == [] and target == 1


def test_kv_pressure_alone_scales_up():
    decisions, target = run([(3, 0, 4, 0.5), (2, 0, 4, 0.9)])
    assert target == 2 and decisions[0].signals["kv_usage"] == 0.9


def test_a_pressure_that_comes_and_goes_scales_up_on_the_stable_window():
    flicker = [(0.7, 4, 4, 0.2), (0.3, 0, 4, 0.2)] * 12  # never a full panic window, mostly waiting
    decisions, target = run(flicker)
    assert target == 2 and decisions[0].reason.startswith("stable")


def test_holds_while_the_new_replica_starts_then_scales_again_if_still_queued():
    decisions, target = run([(15, 20, 4, 0.3)], max_replicas=8, start_delay=8.0)
    # one decision straight to what 24 requests need at 4 per replica (6), none while it starts
    assert [(d.from_replicas, d.to_replicas) for d in decisions] == [(1, 6), (6, 7)]
    assert decisions[1].at - decisions[0].at >= 8.0


def test_scales_down_only_after_the_quiet_period():
    decisions, target = run([(3, 8, 4, 0.2), (OPTIONS.quiet_period_s - 1, 0, 0, 0.0)])
    assert [(d.from_replicas, d.to_replicas) for d in decisions] == [(1, 3)]
    decisions, target = run([(3, 8, 4, 0.2), (OPTIONS.quiet_period_s + 1, 0, 0, 0.0)])
    assert [(d.from_replicas, d.to_replicas) for d in decisions] == [(1, 3), (3, 1)]
    down = decisions[1]
    assert down.at - (3.0 + TICK) == pytest.approx(OPTIONS.quiet_period_s, abs=0.15) and down.reason.startswith("quiet")


def test_never_scales_below_what_the_load_needs():
    # 3 replicas were needed at 4 requests each; 7 keep running without waiting: two must stay
    decisions, target = run([(3, 8, 4, 0.2), (OPTIONS.quiet_period_s + 5, 0, 7, 0.2)])
    assert target == 2 and decisions[-1].to_replicas == 2


def test_respects_max_min_and_zero():
    decisions, target = run([(5, 50, 4, 0.9)], max_replicas=2)
    assert target == 2 and all(d.to_replicas <= 2 for d in decisions)
    decisions, target = run([(3, 8, 4, 0.2), (OPTIONS.quiet_period_s + 1, 0, 0, 0.0)], min_replicas=2)
    assert target == 2
    decisions, target = run([(3, 8, 4, 0.2), (OPTIONS.quiet_period_s + 1, 0, 0, 0.0)], min_replicas=0)
    assert target == 0 and decisions[-1].to_replicas == 0
    # zero only when nothing runs: a single running request keeps one replica
    decisions, target = run([(OPTIONS.quiet_period_s + 1, 0, 1, 0.0)], min_replicas=0)
    assert target == 1 and decisions == []


def test_scaling_spec_rules():
    assert ScalingSpec.fixed(2).model_dump()["min_replicas"] == 2
    with pytest.raises(ValidationError, match="fixed"):
        ScalingSpec(mode="off", min_replicas=1, max_replicas=2)
    with pytest.raises(ValidationError, match="below"):
        ScalingSpec(mode="llm", min_replicas=3, max_replicas=2)
    with pytest.raises(ValidationError):
        LLMPolicyOptions(panic_windw_s=1)


def test_builder_gives_serve_a_valid_config_for_each_mode():
    from ray.serve.config import AutoscalingConfig

    llm = serve_autoscaling_config(ScalingSpec(mode="llm", min_replicas=0, max_replicas=2, llm=OPTIONS))
    config = AutoscalingConfig(**llm)
    assert config.policy.policy_function == LLM_POLICY
    assert (config.upscale_delay_s, config.downscale_delay_s, config.metrics_interval_s) == (0, 0, 0.5)
    assert (config.min_replicas, config.initial_replicas, config.max_replicas) == (0, None, 2)
    assert policy_name(config.model_dump()) == "llm"
    requests = AutoscalingConfig(**serve_autoscaling_config(ScalingSpec(mode="requests", max_replicas=3)))
    assert requests.policy.is_default_policy_function() and requests.upscale_delay_s == 30
    assert policy_name(requests.model_dump()) == "requests"
    assert policy_name(serve_autoscaling_config(ScalingSpec.fixed(2))) == "off"


def test_adapter_reads_the_context_serve_builds():
    """The policy Serve instantiates from the deployment config, called with a real AutoscalingContext."""
    from ray.serve._private.autoscaling_state import _resolve_policy_callable
    from ray.serve._private.common import DeploymentID, ReplicaID, TimeStampedValue
    from ray.serve.config import AutoscalingConfig, AutoscalingContext

    config = AutoscalingConfig(**serve_autoscaling_config(ScalingSpec(mode="llm", max_replicas=4, llm=OPTIONS)))
    policy = _resolve_policy_callable(config.policy)
    dep = DeploymentID(name="engine-tiny-chat", app_name="svc-x-g1")
    replica = ReplicaID("r1", deployment_id=dep)
    state, target = {}, 1
    for step in range(15):
        now = 100.0 + step * TICK
        raw = {WAITING: {replica: [TimeStampedValue(now, 6.0)]}, RUNNING: {replica: [TimeStampedValue(now, 4.0)]},
               KV_USAGE: {replica: [TimeStampedValue(now, 0.3)]}}
        ctx = AutoscalingContext(
            deployment_id=dep, deployment_name=dep.name, app_name=dep.app_name, current_num_replicas=1,
            target_num_replicas=target, running_replicas=[replica], total_num_requests=10.0,
            total_queued_requests=0.0, aggregated_metrics=None, raw_metrics=raw, capacity_adjusted_min_replicas=1,
            capacity_adjusted_max_replicas=4, policy_state=state, last_scale_up_time=None,
            last_scale_down_time=None, current_time=now, config=config)
        target, state = policy(ctx)
    assert target == 3  # 10 requests, 4 per saturated replica


def test_engine_stats_report_idle_once_the_engine_stops_stepping():
    stats = EngineStats()
    stats.record(3, 4, 0.5, at=10.0)
    assert stats.report(now=10.5) == {WAITING: 3.0, RUNNING: 4.0, KV_USAGE: 0.5}
    assert stats.report(now=10.0 + IDLE_AFTER_S + 0.1) == {WAITING: 0.0, RUNNING: 0.0, KV_USAGE: 0.0}


def test_never_scales_down_while_a_replica_starts():
    """Serve's cold start set the target to 1 for a waiting request: nothing runs yet, but the policy waits."""
    state = {"quiet_since": 0.0}
    for step in range(300):
        now = 1.0 + step * TICK
        signals = Signals(now=now, running_replicas=0, target_replicas=1, waiting=0, running=0, kv_usage=0)
        want, state, decision = decide(signals, state, OPTIONS, 0, 2)
        assert want == 1 and decision is None


def test_a_replica_woken_for_a_caller_who_gave_up_stays_a_whole_quiet_period():
    """The caller's request waited past the cold-start bound (503) and left while the first replica started:
    the quiet period counts from the replica being ready, so the caller's retry finds it still running."""
    options = LLMPolicyOptions(panic_window_s=1.0, stable_window_s=2.0, quiet_period_s=3.0)
    state, now = {}, 0.0
    for _ in range(100):  # 10 s of start-up, nothing waiting any more
        now += TICK
        want, state, _ = decide(Signals(now=now, running_replicas=0, target_replicas=1, waiting=0, running=0,
                                        kv_usage=0), state, options, 0, 2)
        assert want == 1
    ready, downs = now, []
    for _ in range(50):
        now += TICK
        want, state, decision = decide(Signals(now=now, running_replicas=1, target_replicas=1, waiting=0,
                                               running=0, kv_usage=0), state, options, 0, 2)
        if decision is not None:
            downs.append((decision.at, decision.to_replicas))
            break
    assert len(downs) == 1 and downs[0][1] == 0
    assert downs[0][0] - ready >= options.quiet_period_s - TICK  # not at once: quiet counted from ready


def test_a_request_waiting_on_a_replica_that_runs_nothing_scales_nothing():
    """maas up's readiness probes: one request at a time waits while a new engine takes its first step (its
    handle's queue, the engine's queue) with nothing running. Before, that tripped the panic window and an idle
    laptop's tiny-chat went to 2 replicas; a cold start from zero replicas still scales up."""
    decisions, target = run([(5, 1, 0, 0.0), (2, 0, 1, 0.01), (5, 1, 0, 0.0)])
    assert decisions == [] and target == 1
    decisions, target = run([(3, 1, 0, 0.0)], min_replicas=0, replicas=0)
    assert target == 1 and decisions[0].reason.startswith("panic")
