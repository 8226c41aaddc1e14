"""Autoscaled model services on the session's platform (autoscaling/, the llm policy): a service with
`--autoscale llm --min-instances 1 --max-instances 2` under a load that queues in vLLM gets a second replica,
answers every call throughout, and goes back to one after the quiet period; every decision is an event with
its signal. Then a live change to `--min-instances 0`: it scales to zero and wakes on the next request.

Small windows (panic 1 s, stable 4 s, quiet 8 s) and `--max-batch 2` (vLLM runs two requests at once, the
rest wait in its queue) keep it short. Engine start-ups: the service, its second replica, the wake: three.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.helpers import wait_status

NAME = "auto-llm"
QUIET_S = 8


def _view(platform) -> dict:
    with platform.admin() as admin:
        return admin.get(f"/default/services/{NAME}").json()


def _until(platform, check, timeout: float, what: str) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        view = _view(platform)
        if check(view):
            return view
        time.sleep(0.5)
    pytest.fail(f"{what} not within {timeout} s: {view}")


@pytest.fixture(scope="module")
def service(platform):
    created = platform.maas_json("services", "deploy", NAME, "--model", "tiny-chat", "--autoscale", "llm",
                                 "--min-instances", "1", "--max-instances", "2", "--max-batch", "2",
                                 "--panic-window", "1", "--stable-window", "4", "--quiet-period", str(QUIET_S))
    assert (created["autoscale"], created["min_instances"], created["max_instances"]) == ("llm", 1, 2)
    yield wait_status(platform, created["id"], {"Running"})
    platform.maas("services", "delete", NAME, "--confirm", "DELETE", check=False)


def test_queueing_load_adds_a_replica_answers_throughout_and_scales_back(platform, service, client):
    assert service["replicas_running"] == 1 and service["replicas_target"] == 1
    stop, failures, answered = threading.Event(), [], []

    def caller() -> None:
        while not stop.is_set():
            try:
                reply = client.chat.completions.create(model=NAME, max_tokens=48, temperature=1.0,
                                                       messages=[{"role": "user", "content": "tell me a story"}])
                answered.append(reply.usage.completion_tokens)
            except Exception as exc:  # every call must be answered, during the scale-up too
                failures.append(repr(exc))

    started = time.time()
    with ThreadPoolExecutor(8) as pool:  # 8 callers, 2 run at once per engine: 6 wait in vLLM's queue
        for _ in range(8):
            pool.submit(caller)
        try:
            decided = _until(platform, lambda v: (v["replicas_target"] or 0) >= 2, 60, "a scale-up decision")
            up = decided["last_scaling"]
            assert (up["from_replicas"], up["to_replicas"], up["policy"]) == (1, 2, "llm")
            assert up["reason"].startswith(("panic", "stable")) and up["signals"]["waiting"] > 0
            _until(platform, lambda v: v["replicas_running"] == 2, 180, "the second replica serving")
            time.sleep(3)  # the new replica takes calls
        finally:
            stop.set()
    loaded_s = time.time() - started
    assert failures == [] and len(answered) > 16, (failures[:3], len(answered), loaded_s)
    ended = time.time()
    # the decision's event may land one reconciler pass after Serve's new target
    view = _until(platform, lambda v: v["replicas_target"] == 1 and v["last_scaling"]["to_replicas"] == 1,
                  QUIET_S + 30, "the scale-down and its event")
    assert time.time() - ended >= QUIET_S - 1  # not before the quiet period
    down = view["last_scaling"]
    assert (down["from_replicas"], down["to_replicas"]) == (2, 1) and down["reason"].startswith("quiet")
    assert view["status"] == "Running"
    messages = [e["message"] for e in platform.maas_json("services", "events", NAME)]
    assert any(m.startswith("Autoscaled 1 -> 2 (llm)") and "waiting" in m for m in messages)
    assert any(m.startswith("Autoscaled 2 -> 1 (llm): quiet") for m in messages)
    shown = platform.maas("services", "get", NAME).stdout
    assert "replicas_target" in shown and "last_scaling" in shown and "quiet" in shown


def test_scale_to_zero_and_wake_on_a_request(platform, service, client):
    wait_status(platform, NAME, {"Running"})
    changed = platform.maas_json("services", "autoscale", NAME, "--autoscale", "llm", "--min-instances", "0",
                                 "--max-instances", "2", "--quiet-period", "3", "--stable-window", "2")
    assert changed["min_instances"] == 0 and changed["status"] == "Scale"
    _until(platform, lambda v: v["replicas_target"] == 0 and v["replicas_running"] == 0
           and v["last_scaling"]["to_replicas"] == 0, 90, "scale to zero")
    assert wait_status(platform, NAME, {"Running"}, timeout=30)["replicas_running"] == 0
    started = time.time()
    reply = client.with_options(timeout=240).chat.completions.create(
        model=NAME, max_tokens=8, messages=[{"role": "user", "content": "hello"}])
    woke_s = time.time() - started
    assert reply.choices[0].message.content is not None and woke_s > 1  # it waited for the first replica
    deadline = time.time() + 10  # the reconciler's next pass writes the wake's event
    while True:
        messages = [e["message"] for e in platform.maas_json("services", "events", NAME)]
        if any(m.startswith("Autoscaled 0 -> 1 (llm): woken by a request") for m in messages):
            break
        assert time.time() < deadline, messages[:5]
        time.sleep(1)
    assert any(m.startswith("Autoscaled 1 -> 0 (llm): quiet") for m in messages)
    assert _view(platform)["status"] == "Running"
