"""Autoscaling reaction (named so as not to shadow the `autoscaling` package on a benchmark's sys.path): Ray Serve's default policy (`requests`) beside the platform's `llm` policy, one load step.

For each policy, one after the other on a local Ray cluster this script starts (so only one policy's engines
compete for the cores): `tiny-chat` is deployed as a model application (min 1, max 2 replicas, `--batch`
requests per engine at once, so the rest wait in vLLM's queue), left idle, then hit by `--concurrency`
streaming callers for `--step` seconds, then left idle again for up to `--after` seconds. A thread reads
Serve's target and running replicas every 0.2 s. Reported per policy:

  decision     seconds from the load step to the scale-up decision (Serve's target 1 -> 2)
  serving      seconds from the step to the second replica RUNNING; beside it the engine load time of the
               first replica (deployed on an idle machine) for the target "serving <= load + 5 s"
  TTFT         p50 / p99 of the calls made during the step (time to the first streamed chunk)
  down         seconds from the end of the load to the target back to 1 (">N" if not within --after)
  replica-s    replica-seconds used from the step until --after seconds after it ended

On a 2-core machine a second replica adds no compute: the figures show reaction, not throughput.
Raw numbers go to benchmarks/results/autoscaling.json.

    .venv/bin/python benchmarks/autoscaling_reaction.py                     # both policies, 90 s step
    .venv/bin/python benchmarks/autoscaling_reaction.py --step 40 --after 60 --only llm
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import OtherLoad, machine  # noqa: E402  (benchmarks/machine.py, beside this script)

RESULTS = ROOT / "benchmarks" / "results" / "autoscaling.json"
POLICIES = ["requests", "llm"]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Replicas(threading.Thread):
    """(time, target, running) of one application's engine deployment, every 0.2 s."""

    def __init__(self, app: str) -> None:
        super().__init__(daemon=True)
        self.app, self.samples, self.stop = app, [], threading.Event()

    def run(self) -> None:
        from serve_apps.ray_compat import serve_details

        while not self.stop.is_set():
            details = serve_details() or {}
            app = (details.get("applications") or {}).get(self.app) or {}
            for deployment in (app.get("deployments") or {}).values():
                running = sum(str(r.get("state")).endswith("RUNNING") for r in deployment.get("replicas", []))
                self.samples.append((time.time(), deployment.get("target_num_replicas"), running))
            self.stop.wait(0.2)

    def first(self, after: float, check) -> float | None:
        return next((t for t, target, running in self.samples if t >= after and check(target, running)), None)

    def replica_seconds(self, start: float, end: float) -> float:
        """Running replicas integrated over [start, end]; the watch stops once the scale-down is seen, and the
        count it saw last holds until `end` (so every policy is counted over the same window)."""
        inside = [(t, running) for t, _target, running in self.samples if start <= t <= end]
        if not inside:
            return 0.0
        return sum((b[0] - a[0]) * a[1] for a, b in zip(inside, inside[1:])) + (end - inside[-1][0]) * inside[-1][1]


async def load(handle, concurrency: int, seconds: float, max_tokens: int) -> list[tuple[float, float | None]]:
    """`concurrency` callers in a loop for `seconds`: (sent at, TTFT or None if the call failed) each."""
    from serve_apps.ray_compat import ChatCompletionRequest, ErrorResponse

    calls: list[tuple[float, float | None]] = []
    end = time.time() + seconds

    async def caller(i: int) -> None:
        while time.time() < end:
            body = ChatCompletionRequest(model="tiny-chat", stream=True, max_tokens=max_tokens, temperature=1.0,
                                         messages=[{"role": "user", "content": f"tell me story {i}"}])
            sent = time.time()
            ttft = None
            try:
                async for chunk in handle.chat.remote(body):
                    head = chunk[0] if isinstance(chunk, list) and chunk else chunk
                    if isinstance(head, ErrorResponse):  # the engine refused the call: a failure, not a TTFT
                        raise RuntimeError(head.error.message)
                    if ttft is None:
                        ttft = time.time() - sent
            except Exception as exc:  # a failed call counts as such
                log(f"call failed: {exc!r}"[:200])
                ttft = None
            calls.append((sent, ttft))

    await asyncio.gather(*(caller(i) for i in range(concurrency)))
    return calls


def run_policy(mode: str, args, model_path: str) -> dict:
    from ray import serve

    from autoscaling.config import LLMPolicyOptions
    from serve_apps.catalog import builtin
    from serve_apps.model_app import ModelServiceSpec, build_model_app

    name = f"bench-{mode}"
    spec = ModelServiceSpec(model=builtin("tiny-chat"), model_path=model_path, app_name=name, min_replicas=1,
                            max_replicas=2, autoscale=mode, max_batch=args.batch, accelerator="cpu",
                            autoscale_options=LLMPolicyOptions(quiet_period_s=args.quiet))
    log(f"{mode}: deploying")
    started = time.time()
    serve.run(build_model_app(spec), name=name, route_prefix=None)
    engine_load_s = time.time() - started
    log(f"{mode}: running after {engine_load_s:.1f} s; idle {args.idle} s")
    watch = Replicas(name)
    watch.start()
    time.sleep(args.idle)
    handle = serve.get_deployment_handle(spec.deployment_name, name).options(stream=True)
    others = OtherLoad()
    others.start()
    step = time.time()
    calls = asyncio.run(load(handle, args.concurrency, args.step, args.max_tokens))
    ended = time.time()
    log(f"{mode}: load over ({len(calls)} calls); watching the scale-down for up to {args.after} s")
    deadline = ended + args.after
    while time.time() < deadline and watch.first(ended, lambda target, _r: target == 1) is None:
        time.sleep(0.5)
    time.sleep(max(0.0, min(deadline, time.time() + 1) - time.time()))
    watch.stop.set()
    watch.join()
    other_cores = others.stop()
    serve.delete(name)
    decision = watch.first(step, lambda target, _r: (target or 0) >= 2)
    serving = watch.first(step, lambda _t, running: running >= 2)
    down = watch.first(max(ended, decision or ended), lambda target, _r: target == 1) if decision else None
    ttfts = sorted(t for _sent, t in calls if t is not None)
    return {"policy": mode, "engine_load_s": engine_load_s, "calls": len(calls),
            "failed": sum(t is None for _s, t in calls),
            "decision_s": None if decision is None else decision - step,
            "serving_s": None if serving is None else serving - step,
            "replica_start_s": None if None in (serving, decision) else serving - decision,
            "ttft_p50_ms": 1000 * statistics.median(ttfts) if ttfts else None,
            "ttft_p99_ms": 1000 * ttfts[min(len(ttfts) - 1, int(0.99 * len(ttfts)))] if ttfts else None,
            "down_s": None if down is None else down - ended,
            "replica_seconds": watch.replica_seconds(step, ended + args.after),
            "window_s": ended + args.after - step, "other_load_cores": other_cores}


def fmt(value, unit: str = "", none: str = "never") -> str:
    return none if value is None else f"{value:.1f}{unit}"


def table(rows: list[dict], args) -> str:
    lines = ["| policy | decision after step | 2nd replica serving (its start; 1st engine load) | "
             "TTFT p50 / p99 during step | scale-down after load | replica-s | calls (failed) | other load |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['policy']} | {fmt(r['decision_s'], ' s')} | {fmt(r['serving_s'], ' s')} "
            f"({fmt(r['replica_start_s'], ' s', '-')}; {r['engine_load_s']:.1f} s) | "
            f"{fmt(r['ttft_p50_ms'], ' ms', '-')} / {fmt(r['ttft_p99_ms'], ' ms', '-')} | "
            f"{fmt(r['down_s'], ' s', f'>{args.after:g} s')} | {r['replica_seconds']:.0f} "
            f"(of {r['window_s']:.0f} s) | {r['calls']} ({r['failed']}) | "
            f"{fmt(r['other_load_cores'], ' cores', '-')} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=POLICIES, action="append")
    parser.add_argument("--step", type=float, default=90, help="seconds of load")
    parser.add_argument("--idle", type=float, default=10, help="idle seconds before the step")
    parser.add_argument("--after", type=float, default=90, help="seconds watched after the load")
    parser.add_argument("--concurrency", type=int, default=24)
    parser.add_argument("--batch", type=int, default=4, help="requests one engine runs at once (max_num_seqs)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--quiet", type=float, default=30, help="the llm policy's quiet period (s)")
    parser.add_argument("--models-dir", default=os.environ.get("MAAS_TEST_CACHE", str(Path.home() / ".cache" /
                                                                                     "maas-tests")) + "/models")
    args = parser.parse_args()
    os.environ.setdefault("MAAS_HOME", str(Path(args.models_dir).parent))
    import ray
    from ray import serve

    from serve_apps.catalog import builtin, ensure_built

    model_path = str(ensure_built(builtin("tiny-chat"), Path(args.models_dir)))
    ray.init(address="local", num_cpus=8, include_dashboard=False, namespace="bench-autoscaling")
    serve.start(proxy_location="Disabled")
    rows = [run_policy(mode, args, model_path) for mode in (args.only or POLICIES)]
    serve.shutdown()
    ray.shutdown()
    print(table(rows, args))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"machine": machine(), "args": vars(args), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
