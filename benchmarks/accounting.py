"""Benchmark of the accounting path: admissions per second and added latency per request with 2 gateway
replicas sharing the accounting actor, beside a naive per-replica in-memory limiter (and its overshoot).

The replicas are Ray actors that run exactly the gateway's accounting code (`admit` round trip, then a
background `Settler` that makes the usage record durable in SQL), without HTTP or an engine, so the figures
are the accounting path alone. Run:  .venv/bin/python benchmarks/accounting.py [--seconds 10] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import ray
from rich.console import Console
from rich.table import Table

RESULTS = Path(__file__).parent / "results" / "accounting.json"


@ray.remote(num_cpus=0)
class ReplicaDriver:
    """One gateway replica's worth of accounting calls."""

    def __init__(self, actor_name: str, namespace: str):
        from cluster.accounting.windows import Limit, Windows
        from serve_apps.gateway.admission import Call, NaturalBatcher, Settler

        self._Call, self._Limit, self._Windows = Call, Limit, Windows
        self._actor = ray.get_actor(actor_name, namespace=namespace)

        async def actor():
            return self._actor

        async def admit_batch(requests):
            return await self._actor.admit_many.remote(requests)

        self._settler = Settler(actor)
        self._admit = NaturalBatcher(admit_batch)  # exactly what the gateway does

    async def run_shared(self, key_hash: str, model: str, seconds: float, concurrency: int) -> dict:
        latencies, admitted, refused = [], 0, 0
        stop = time.perf_counter() + seconds

        async def worker():
            nonlocal admitted, refused
            while time.perf_counter() < stop:
                start = time.perf_counter()
                answer = await self._admit((key_hash, model, 8, None))
                latencies.append(time.perf_counter() - start)
                call = self._Call(answer["record"], "127.0.0.1", answer.get("reservation"))
                call.prompt_tokens = 8
                if answer.get("error"):
                    refused += 1
                    self._settler.submit(call, 429, answer["error"])
                else:
                    admitted += 1
                    self._settler.submit(call, 200)

        began = time.perf_counter()
        await asyncio.gather(*[worker() for _ in range(concurrency)])
        window = time.perf_counter() - began
        while self._settler.pending:  # every record acknowledged (durable) before the run counts as done
            await asyncio.sleep(0.05)
        return {"admitted": admitted, "refused": refused, "latencies": latencies, "window_s": window,
                "calls": len(latencies),
                "drain_s": time.perf_counter() - began - window}

    async def burst_shared(self, key_hash: str, model: str, n: int) -> int:
        answers = await asyncio.gather(*[self._admit((key_hash, model, 1, None)) for _ in range(n)])
        return sum(1 for a in answers if not a.get("error"))

    def burst_naive(self, rpm: int, n: int) -> int:
        """What a limiter inside each replica admits: it cannot see the other replica's calls."""
        windows, limit, now = self._Windows(), [self._Limit("rpm", "rpm", rpm)], time.time()
        admitted = 0
        for _ in range(n):
            if windows.first_exceeded(limit, 1, now) is None:
                windows.count(limit, 1, now)
                admitted += 1
        return admitted

    def run_naive(self, rpm: int, seconds: float) -> dict:
        windows, limit = self._Windows(), [self._Limit("rpm", "rpm", rpm)]
        latencies, stop = [], time.perf_counter() + seconds
        while time.perf_counter() < stop:
            start = time.perf_counter()
            now = time.time()
            if windows.first_exceeded(limit, 1, now) is None:
                windows.count(limit, 1, now)
            latencies.append(time.perf_counter() - start)
        return {"admitted": len(latencies), "latencies": latencies}


def _setup(url: str, rpm: int) -> tuple[str, str]:
    """A project, a key, the built-in chat model as a preset and an endpoint with the benchmark's RPM."""
    from cluster.keys import service as keys
    from cluster.keys.schemas import KeyCreate
    from cluster.presets.service import register_builtin_models
    from cluster.state.db import Endpoint, Preset, migrate, session_scope

    migrate(url)
    with session_scope(url) as session:
        register_builtin_models(session, ["tiny-chat"])
    with session_scope(url) as session:
        preset = session.get(Preset, "tiny-chat")
        preset.rpm, preset.tpm = 10**9, 10**12  # only the endpoints' limits are under test
        created, key_hash = keys.create_key(session, "default", KeyCreate(label="bench", description="bench"))
        session.add(Endpoint(id="ep-bench", project_id="default", name="bench-ep", target="tiny-chat",
                             rpm=rpm, tpm=10**12, enabled=True))
        session.add(Endpoint(id="ep-burst", project_id="default", name="burst-ep", target="tiny-chat",
                             rpm=100, tpm=10**12, enabled=True))
    return key_hash, "bench-ep"


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--concurrency", type=int, default=64, help="in-flight calls per replica")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--burst-rpm", type=int, default=100)
    args = parser.parse_args()

    from cluster.accounting import actor as accounting

    home = Path(tempfile.mkdtemp(prefix="maas-bench-acct-"))
    url = f"sqlite:///{home / 'maas.db'}"
    key_hash, model = _setup(url, rpm=10**9)
    # A cluster of its own ("local"), never one a developer or a test session runs.
    ray.init(address="local", num_cpus=4, namespace="maas-bench", include_dashboard=False, logging_level="ERROR")
    actor = accounting.AccountingActor.options(name="bench-accounting", namespace="maas-bench").remote(url)
    ray.get(actor.reload.remote())
    drivers = [ReplicaDriver.remote("bench-accounting", "maas-bench") for _ in range(args.replicas)]

    # Exactness: N + k simultaneous calls over the replicas, RPM = N (the burst endpoint's limit).
    n, extra = args.burst_rpm, args.burst_rpm // 2
    per = (n + extra) // args.replicas
    shared_burst = sum(ray.get([d.burst_shared.remote(key_hash, "burst-ep", per) for d in drivers]))
    naive_burst = sum(ray.get([d.burst_naive.remote(n, per) for d in drivers]))

    ray.get([d.run_shared.remote(key_hash, model, 2, args.concurrency) for d in drivers])  # warm-up
    shared = ray.get([d.run_shared.remote(key_hash, model, args.seconds, args.concurrency) for d in drivers])
    shared_wall = max(r["window_s"] for r in shared)
    naive = ray.get([d.run_naive.remote(10**9, args.seconds) for d in drivers])
    # Added latency when the actor is not saturated: one call in flight per replica.
    light = ray.get([d.run_shared.remote(key_hash, model, args.seconds / 2, 1) for d in drivers])

    from sqlalchemy import create_engine, text

    with create_engine(url).connect() as conn:
        records = conn.execute(text("SELECT count(*) FROM usage_records")).scalar()
    shared_lat = [x for r in shared for x in r["latencies"]]
    light_lat = [x for r in light for x in r["latencies"]]
    naive_lat = [x for r in naive for x in r["latencies"]]
    rows = [
        {"limiter": "shared accounting actor", "replicas": args.replicas,
         "admissions_per_s": sum(r["admitted"] for r in shared) / shared_wall,
         "p50_ms": _pct(shared_lat, 0.5), "p99_ms": _pct(shared_lat, 0.99),
         "burst_admitted": shared_burst, "burst_limit": n, "overshoot": shared_burst - n,
         "usage_records_written": records, "settle_drain_s": max(r["drain_s"] for r in shared),
         "refused_in_throughput_run": sum(r["refused"] for r in shared),
         "light_load_p50_ms": _pct(light_lat, 0.5), "light_load_p99_ms": _pct(light_lat, 0.99)},
        {"limiter": "naive per-replica in-memory", "replicas": args.replicas,
         "admissions_per_s": sum(r["admitted"] for r in naive) / args.seconds,
         "p50_ms": _pct(naive_lat, 0.5), "p99_ms": _pct(naive_lat, 0.99),
         "burst_admitted": naive_burst, "burst_limit": n, "overshoot": naive_burst - n,
         "usage_records_written": 0},
    ]
    table = Table(title=f"Accounting path, {args.replicas} gateway replicas, {args.concurrency} in flight each")
    for column in ("limiter", "admissions/s (saturated)", "p50 / p99 ms saturated", "p50 / p99 ms 1 in flight",
                   f"burst {n + extra} @ RPM {n}", "overshoot", "records"):
        table.add_column(column)
    for row in rows:
        light_ms = (f"{row['light_load_p50_ms']:.3f} / {row['light_load_p99_ms']:.3f}"
                    if "light_load_p50_ms" in row else f"{row['p50_ms']:.3f} / {row['p99_ms']:.3f}")
        table.add_row(row["limiter"], f"{row['admissions_per_s']:,.0f}", f"{row['p50_ms']:.3f} / {row['p99_ms']:.3f}",
                      light_ms, str(row["burst_admitted"]), str(row["overshoot"]), str(row["usage_records_written"]))
    Console().print(table)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"args": vars(args), "rows": rows,
                                   "median_latency_ms": statistics.median(shared_lat) * 1000}, indent=2))
    ray.shutdown()


if __name__ == "__main__":
    main()
