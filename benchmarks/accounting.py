"""Benchmark of the accounting path: admissions per second and added latency per request with 2 gateway
replicas sharing the accounting actor, sharded over 1, 2 and 4 actors (MAAS_ACCOUNTING_SHARDS), beside a naive
per-replica in-memory limiter (and its overshoot).

The replicas are Ray actors that run exactly the gateway's accounting code (`AccountingShards.admit`: the
batched round trip to the caller's shard, then a background `Settler` that makes the usage record durable in
SQL), without HTTP or an engine, so the figures are the accounting path alone. The calls come from --projects
projects (spread evenly over the shards), one key each. Run:
  .venv/bin/python benchmarks/accounting.py [--seconds 10] [--concurrency 64] [--shards 1 2 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import ray
from rich.console import Console
from rich.table import Table

from serve_apps.contract import AdmissionRequest, project_shard, shard_actor

RESULTS = Path(__file__).parent / "results" / "accounting.json"


@ray.remote(num_cpus=0)
class ReplicaDriver:
    """One gateway replica's worth of accounting calls."""

    def __init__(self, shards: int, namespace: str, name: str):
        from cluster.accounting.windows import Limit, Windows
        from serve_apps.gateway.admission import Call, Settler
        from serve_apps.gateway.shards import AccountingShards

        self._Call, self._Limit, self._Windows = Call, Limit, Windows
        accounting = AccountingShards(shards, name, namespace)  # exactly what the gateway does
        self._settler = Settler(accounting.actor, accounting.settlement_shard)
        self._admit = accounting.admit

    async def run_shared(self, key_hashes: list[str], model: str, seconds: float, concurrency: int) -> dict:
        latencies, admitted, refused = [], 0, 0
        stop = time.perf_counter() + seconds

        async def worker(index: int):
            nonlocal admitted, refused
            while time.perf_counter() < stop:
                key_hash = key_hashes[index % len(key_hashes)]
                index += 1
                start = time.perf_counter()
                answer = await self._admit(AdmissionRequest(key_hash, model, 8, None))
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
        await asyncio.gather(*[worker(index) for index in range(concurrency)])
        window = time.perf_counter() - began
        while self._settler.pending:  # every record acknowledged (durable) before the run counts as done
            await asyncio.sleep(0.05)
        return {"admitted": admitted, "refused": refused, "latencies": latencies, "window_s": window,
                "calls": len(latencies),
                "drain_s": time.perf_counter() - began - window}

    async def burst_shared(self, key_hashes: list[str], model: str, n: int) -> list[int]:
        """`n` simultaneous calls of every key (every project) at once: how many of each were admitted."""
        answers = await asyncio.gather(*[self._admit(AdmissionRequest(key_hash, model, 1, None))
                                         for key_hash in key_hashes for _ in range(n)])
        return [sum(1 for a in answers[i * n:(i + 1) * n] if not a.get("error")) for i in range(len(key_hashes))]

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


def _projects(count: int, spread_over: int) -> list[str]:
    """Project ids that fall evenly on `spread_over` shards (so also on every divisor of it)."""
    ids, per = [], {shard: 0 for shard in range(spread_over)}
    for index in range(10_000):
        project = f"bench-p{index}"
        shard = project_shard(project, spread_over)
        if per[shard] < count // spread_over:
            per[shard] += 1
            ids.append(project)
        if len(ids) == count:
            return ids
    raise AssertionError("no even spread found")


def _setup(url: str, projects: list[str], rpm: int, burst_rpm: int) -> list[str]:
    """Projects with a key each, the built-in chat model as a preset, and in each project an endpoint with the
    benchmark's RPM (`bench-ep`) and one with the burst's (`burst-ep`). Returns the keys' hashes."""
    from cluster.keys import service as keys
    from cluster.keys.schemas import KeyCreate
    from cluster.presets.service import register_builtin_models
    from cluster.state.db import Endpoint, Preset, Project, migrate, session_scope

    migrate(url)
    with session_scope(url) as session:
        register_builtin_models(session, ["tiny-chat"])
    key_hashes = []
    with session_scope(url) as session:
        preset = session.get(Preset, "tiny-chat")
        preset.rpm, preset.tpm = 10**9, 10**12  # only the endpoints' limits are under test
        for project in projects:
            session.add(Project(id=project, name=project))
            session.flush()
            _created, key_hash = keys.create_key(session, project, KeyCreate(label="bench", description="bench"))
            key_hashes.append(key_hash)
            session.add(Endpoint(id=f"ep-bench-{project}", project_id=project, name="bench-ep", target="tiny-chat",
                                 rpm=rpm, tpm=10**12, enabled=True))
            session.add(Endpoint(id=f"ep-burst-{project}", project_id=project, name="burst-ep", target="tiny-chat",
                                 rpm=burst_rpm, tpm=10**12, enabled=True))
    return key_hashes


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else 0.0


def _measure(shards: int, args, home: Path) -> dict:
    """One configuration: `shards` accounting actors on a fresh database, `args.replicas` gateway replicas."""
    from sqlalchemy import create_engine, text

    from cluster.accounting.actor import AccountingActor

    url = f"sqlite:///{home / f'maas-{shards}.db'}"
    key_hashes = _setup(url, _projects(args.projects, max(args.shards)), 10**9, args.burst_rpm)
    namespace = f"maas-bench-{shards}"
    actors = [AccountingActor.options(name=shard_actor(i), namespace=namespace).remote(url, i, shards)
              for i in range(shards)]
    ray.get([actor.reload.remote() for actor in actors])
    drivers = [ReplicaDriver.remote(shards, namespace, f"gw-{r}") for r in range(args.replicas)]

    # Exactness: N + k simultaneous calls of every project over the replicas, RPM = N (its burst endpoint).
    n, extra = args.burst_rpm, args.burst_rpm // 2
    per = (n + extra) // args.replicas
    bursts = ray.get([d.burst_shared.remote(key_hashes, "burst-ep", per) for d in drivers])
    admitted_per_project = [sum(column) for column in zip(*bursts)]

    ray.get([d.run_shared.remote(key_hashes, "bench-ep", 2, args.concurrency) for d in drivers])  # warm-up
    shared = ray.get([d.run_shared.remote(key_hashes, "bench-ep", args.seconds, args.concurrency) for d in drivers])
    wall = max(r["window_s"] for r in shared)
    # Added latency when the actors are not saturated: one call in flight per replica.
    light = ray.get([d.run_shared.remote(key_hashes, "bench-ep", args.seconds / 2, 1) for d in drivers])
    with create_engine(url).connect() as conn:
        records = conn.execute(text("SELECT count(*) FROM usage_records")).scalar()
    for handle in actors + drivers:
        ray.kill(handle)
    shared_lat = [x for r in shared for x in r["latencies"]]
    light_lat = [x for r in light for x in r["latencies"]]
    rate = sum(r["admitted"] for r in shared) / wall
    return {"limiter": f"shared accounting, {shards} shard{'s' if shards > 1 else ''}", "shards": shards,
            "replicas": args.replicas, "projects": args.projects, "admissions_per_s": rate,
            "admissions_per_s_per_shard": rate / shards,
            "p50_ms": _pct(shared_lat, 0.5), "p99_ms": _pct(shared_lat, 0.99),
            "burst_admitted": sum(admitted_per_project), "burst_limit": n * args.projects,
            "overshoot": sum(max(a - n, 0) for a in admitted_per_project),
            "usage_records_written": records, "settle_drain_s": max(r["drain_s"] for r in shared),
            "refused_in_throughput_run": sum(r["refused"] for r in shared),
            "light_load_p50_ms": _pct(light_lat, 0.5), "light_load_p99_ms": _pct(light_lat, 0.99)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--concurrency", type=int, default=64, help="in-flight calls per replica")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--shards", type=int, nargs="+", default=[1, 2, 4], help="accounting shard counts to run")
    parser.add_argument("--projects", type=int, default=8, help="projects calling (one key each)")
    parser.add_argument("--burst-rpm", type=int, default=100)
    args = parser.parse_args()
    if args.projects % max(args.shards):
        parser.error("--projects must be a multiple of the largest --shards (an even spread)")

    home = Path(tempfile.mkdtemp(prefix="maas-bench-acct-"))
    # A cluster of its own ("local"), never one a developer or a test session runs.
    ray.init(address="local", num_cpus=4, include_dashboard=False, logging_level="ERROR")
    rows = [_measure(shards, args, home) for shards in args.shards]
    driver = ReplicaDriver.remote(1, "maas-bench-naive", "naive")
    n, extra = args.burst_rpm, args.burst_rpm // 2
    naive_burst = ray.get(driver.burst_naive.remote(n, (n + extra) // args.replicas)) * args.replicas
    naive = ray.get([ReplicaDriver.remote(1, "maas-bench-naive", f"naive-{r}").run_naive.remote(10**9, args.seconds)
                     for r in range(args.replicas)])
    naive_lat = [x for r in naive for x in r["latencies"]]
    rows.append({"limiter": "naive per-replica in-memory", "replicas": args.replicas,
                 "admissions_per_s": sum(r["admitted"] for r in naive) / args.seconds,
                 "p50_ms": _pct(naive_lat, 0.5), "p99_ms": _pct(naive_lat, 0.99),
                 "burst_admitted": naive_burst, "burst_limit": n, "overshoot": naive_burst - n,
                 "usage_records_written": 0})
    table = Table(title=f"Accounting path, {args.replicas} gateway replicas, {args.concurrency} in flight each, "
                        f"{args.projects} projects")
    for column in ("limiter", "admissions/s (saturated)", "per shard", "p50 / p99 ms saturated",
                   "p50 / p99 ms 1 in flight", f"burst {n + extra} @ RPM {n} per project", "overshoot", "records"):
        table.add_column(column)
    for row in rows:
        light_ms = (f"{row['light_load_p50_ms']:.3f} / {row['light_load_p99_ms']:.3f}"
                    if "light_load_p50_ms" in row else f"{row['p50_ms']:.3f} / {row['p99_ms']:.3f}")
        per_shard = f"{row['admissions_per_s_per_shard']:,.0f}" if "shards" in row else ""
        table.add_row(row["limiter"], f"{row['admissions_per_s']:,.0f}", per_shard,
                      f"{row['p50_ms']:.3f} / {row['p99_ms']:.3f}", light_ms,
                      f"{row['burst_admitted']} of {row['burst_limit']}", str(row["overshoot"]),
                      str(row["usage_records_written"]))
    Console().print(table)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    ray.shutdown()


if __name__ == "__main__":
    main()
