"""Usage under faults (issue 11): each fault under load, on a platform of this script's own (its own Ray head,
MAAS_HOME and PostgreSQL server), and what was recorded for it.

    .venv/bin/python benchmarks/faults.py [--only cancel50,gateway,...] [--outage-s 60]

Faults, one after the other, each with a key of its own and the model quiet before and after:
  cancel50 / cancel90  the client closes 8 streams of 300 tokens at 50% / 90%
  gateway              one of the two gateway replicas is killed (SIGKILL) while 12 streams run
  engine               the engine replica of a service is killed while 8 streams of 600 tokens run
  actor                the accounting actor is killed while 100 calls (half streamed) run
  postgres             PostgreSQL is stopped for --outage-s seconds while calls keep coming (2 per second)

Per fault: calls sent, answered (200 and complete), usage records of the fault's key, lost (calls without a
record) and double (records beyond one per call), tokens the clients saw (content chunks), tokens billed
(completion tokens of the records), and the engine's own count over the fault (its counters, as
`maas usage audit --since` reads them). Target on every row: lost 0, double 0, billed = engine; for the killed
engine, whose counters die with it (it pushes them every 5 s), billed = delivered (issue 11: "recorded as a
failure with the tokens delivered"). Clients count delivered tokens from the running usage of every chunk.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("MAAS_TEST_SLOT", "6")  # ports of their own (tests/helpers.py), beside a test platform
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import httpx  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402

from machine import machine  # noqa: E402
from tests import pg  # noqa: E402
from tests.helpers import BIN, RAY_PORT, SERVE_PORT, actor_pids, start_ray_head, stop_ray  # noqa: E402
from serve_apps.settings import RAY_NODE_ENV  # noqa: E402

CHAT = "tiny-chat"
FAULTS = ("cancel50", "cancel90", "gateway", "engine", "actor", "postgres")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Platform:
    def __init__(self, home: Path, database_url: str):
        self.home, self.database_url = home, database_url
        self.base = f"http://127.0.0.1:{SERVE_PORT}"
        self.admin_key = "admin-faults-" + os.urandom(6).hex()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MAAS_"))} | {
            "MAAS_HOME": str(home), "MAAS_PORT": str(SERVE_PORT), "MAAS_ADMIN_KEY": self.admin_key,
            "MAAS_DATABASE_URL": database_url, "RAY_AUTH_MODE": "disabled",
            "RAY_ADDRESS": f"127.0.0.1:{RAY_PORT}", "PATH": f"{BIN}:{os.environ['PATH']}"} | RAY_NODE_ENV

    def maas(self, *args: str, check: bool = True) -> str:
        done = subprocess.run([str(BIN / "maas"), *args], env=self.env, capture_output=True, text=True, timeout=900)
        if check and done.returncode != 0:
            raise RuntimeError(f"maas {' '.join(args)}: {done.stdout[-2000:]}{done.stderr[-2000:]}")
        return done.stdout

    def key(self, label: str) -> dict:
        return json.loads(self.maas("keys", "create", "--label", label, "--json"))

    def records(self, key_id: str) -> list[dict]:
        with create_engine(self.database_url).connect() as conn:
            return [dict(r._mapping) for r in conn.execute(
                text("SELECT status_code, completion_tokens FROM usage_records WHERE key_id = :k"), {"k": key_id})]

    def engine_tokens(self, since: float, model: str) -> int | None:
        answer = httpx.get(f"{self.base}/api/v1/usage/audit", params={"since": since}, timeout=60,
                           headers={"Authorization": f"Bearer {self.admin_key}"})
        answer.raise_for_status()
        rows = [r for r in answer.json()["models"] if r["model"] == model]
        return rows[0]["engine_generation_tokens"] if rows else None

    def pids(self, class_prefix: str) -> list[int]:
        return actor_pids(self.env, class_prefix)


def stream(base: str, key: str, model: str, max_tokens: int, close_at: int | None = None,
           reached: threading.Barrier | None = None, reach: int = 20) -> tuple[int, bool, bool]:
    """(tokens delivered, complete, error event) of one streamed chat call. The client asks for the engine's
    running usage in every chunk (continuous_usage_stats), so what it saw is counted in tokens, exactly (a chunk
    may carry several tokens, or none that is text); `close_at` and `reach` are token counts too."""
    delivered, complete, errored, waited = 0, False, False, False
    body = {"model": model, "stream": True, "max_tokens": max_tokens, "ignore_eos": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True},
            "messages": [{"role": "user", "content": "tell me a long story"}]}
    try:
        with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=300,
                          headers={"Authorization": f"Bearer {key}"}) as response:
            if response.status_code != 200:
                return 0, False, False
            for line in response.iter_lines():
                if line == "data: [DONE]":
                    complete = True
                elif line.startswith("data: {"):
                    chunk = json.loads(line[6:])
                    errored = errored or chunk.get("object") == "error" or "error" in chunk
                    delivered = max(delivered, ((chunk.get("usage") or {}).get("completion_tokens") or 0))
                if close_at is not None and delivered >= close_at:
                    return delivered, False, errored
                if reached is not None and not waited and delivered >= reach:
                    waited = True
                    reached.wait(timeout=300)
    except httpx.HTTPError:
        pass
    finally:
        if reached is not None and not waited:
            reached.abort()
    return delivered, complete and not errored, errored


def plain(base: str, key: str, model: str, max_tokens: int) -> tuple[int, bool, bool]:
    try:
        answer = httpx.post(f"{base}/v1/chat/completions", timeout=300, headers={"Authorization": f"Bearer {key}"},
                            json={"model": model, "max_tokens": max_tokens, "ignore_eos": True,
                                  "messages": [{"role": "user", "content": "hi"}]})
    except httpx.HTTPError:
        return 0, False, False
    if answer.status_code != 200:
        return 0, False, answer.status_code >= 500
    return answer.json()["usage"]["completion_tokens"], True, False


def settle(platform: Platform, key: dict, calls: int, wait_s: float) -> list[dict]:
    deadline = time.time() + wait_s
    while len(rows := platform.records(key["id"])) < calls and time.time() < deadline:
        time.sleep(1)
    time.sleep(8)  # late or duplicate records would show now; the engines' counters are pushed every 5 s
    return platform.records(key["id"])


def row(name: str, results: list[tuple[int, bool, bool]], records: list[dict], engine: int | None) -> dict:
    billed = sum(r["completion_tokens"] for r in records)
    delivered = sum(d for d, _, _ in results)
    return {"fault": name, "calls": len(results), "answered": sum(done for _, done, _ in results),
            "errors": sum(e for _, _, e in results), "records": len(records),
            "lost": max(len(results) - len(records), 0), "double": max(len(records) - len(results), 0),
            "delivered": delivered, "billed": billed, "engine": engine,
            "billed_minus_engine": None if engine is None else billed - engine,
            "billed_minus_delivered": billed - delivered, "statuses": sorted({r["status_code"] for r in records})}


def cancel(platform: Platform, share: float) -> dict:
    key, since = platform.key(f"cancel{int(share * 100)}"), time.time()
    with cf.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: stream(platform.base, key["key"], CHAT, 300, close_at=int(300 * share)),
                                range(8)))
    records = settle(platform, key, 8, 60)
    return row(f"client cancels at {int(share * 100)}%", results, records, platform.engine_tokens(since, CHAT))


def gateway(platform: Platform) -> dict:
    key, since = platform.key("gateway"), time.time()
    victims = platform.pids("ServeReplica:maas-gateway:")
    reached = threading.Barrier(13)
    with cf.ThreadPoolExecutor(12) as pool:
        futures = [pool.submit(stream, platform.base, key["key"], CHAT, 300, None, reached) for _ in range(12)]
        reached.wait(timeout=300)
        os.kill(victims[0], signal.SIGKILL)
        results = [f.result() for f in futures]
    records = settle(platform, key, 12, 120)
    answer = row("gateway replica killed (1 of 2)", results, records, platform.engine_tokens(since, CHAT))
    deadline = time.time() + 180
    while len(platform.pids("ServeReplica:maas-gateway:")) < 2 and time.time() < deadline:
        time.sleep(2)
    return answer


def engine(platform: Platform) -> dict:
    view = json.loads(platform.maas("services", "deploy", "fault-bench", "--model", CHAT, "--json"))
    try:
        deadline = time.time() + 600
        while view["status"] != "Running" and time.time() < deadline:
            time.sleep(3)
            view = json.loads(platform.maas("services", "get", "fault-bench", "--json"))
        [victim] = platform.pids(f"ServeReplica:{view['app_name']}:")
        key, since = platform.key("engine"), time.time()
        reached = threading.Barrier(9)
        with cf.ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(stream, platform.base, key["key"], "fault-bench", 600, None, reached, 30)
                       for _ in range(8)]
            reached.wait(timeout=300)
            os.kill(victim, signal.SIGKILL)
            results = [f.result() for f in futures]
        records = settle(platform, key, 8, 60)
        return row("engine replica killed", results, records, platform.engine_tokens(since, view["id"]))
    finally:
        platform.maas("services", "delete", "fault-bench", "--confirm", "DELETE", check=False)


def actor(platform: Platform) -> dict:
    key, since = platform.key("actor"), time.time()
    with cf.ThreadPoolExecutor(10) as pool:
        futures = [pool.submit(stream if i % 2 else plain, platform.base, key["key"], CHAT, 32) for i in range(100)]
        while sum(f.done() for f in futures) < 30:
            time.sleep(0.05)
        [victim] = platform.pids("AccountingActor")
        os.kill(victim, signal.SIGKILL)
        results = [f.result() for f in futures]
    records = settle(platform, key, 100, 120)
    return row("accounting actor killed", results, records, platform.engine_tokens(since, CHAT))


def postgres(platform: Platform, outage_s: float) -> dict:
    key, since = platform.key("postgres"), time.time()
    results: list[tuple[int, bool]] = []
    with cf.ThreadPoolExecutor(8) as pool:
        futures, start, paused = [], time.time(), False
        while time.time() - start < outage_s + 20:
            futures.append(pool.submit(plain, platform.base, key["key"], CHAT, 16))
            if not paused and time.time() - start > 5:
                log(f"PostgreSQL stopped for {outage_s:.0f} s")
                pg.pause_postgres()
                paused, down_at = True, time.time()
            if paused and down_at and time.time() - down_at > outage_s:
                pg.resume_postgres()
                log("PostgreSQL back")
                down_at = None
            time.sleep(0.5)
        results = [f.result() for f in futures]
    records = settle(platform, key, len(results), 180)
    return row(f"PostgreSQL down {outage_s:.0f} s", results, records, platform.engine_tokens(since, CHAT))


def table(rows: list[dict]) -> str:
    head = ["fault", "calls", "answered", "error events", "records", "lost", "double", "delivered", "billed",
            "engine", "billed - engine", "billed - delivered", "statuses"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join(str(v) for v in (
            r["fault"], r["calls"], r["answered"], r["errors"], r["records"], r["lost"], r["double"], r["delivered"],
            r["billed"], r["engine"], r["billed_minus_engine"], r["billed_minus_delivered"],
            ",".join(map(str, r["statuses"])))) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(FAULTS))
    parser.add_argument("--outage-s", type=float, default=60)
    parser.add_argument("--models", default=str(Path.home() / ".cache" / "maas-tests" / "models"),
                        help="built models to use (tiny-chat is built there if missing)")
    args = parser.parse_args()
    only = args.only.split(",")
    home = Path(tempfile.mkdtemp(prefix="maas-faults-"))
    Path(args.models).mkdir(parents=True, exist_ok=True)
    (home / "models").symlink_to(Path(args.models).resolve())
    platform = Platform(home, pg.start_postgres("faults"))
    stop_ray(platform.env)
    start_ray_head(platform.env)
    rows = []
    try:
        log("maas up ...")
        platform.maas("up")
        warm = platform.key("warm")
        stream(platform.base, warm["key"], CHAT, 16)
        time.sleep(8)  # the engines push their counters every 5 s: the warm-up's tokens must not fall in a fault's range
        for name in only:
            log(f"fault: {name}")
            rows.append({"cancel50": lambda: cancel(platform, 0.5), "cancel90": lambda: cancel(platform, 0.9),
                         "gateway": lambda: gateway(platform), "engine": lambda: engine(platform),
                         "actor": lambda: actor(platform),
                         "postgres": lambda: postgres(platform, args.outage_s)}[name]())
            log(json.dumps(rows[-1]))
    finally:
        stop_ray(platform.env)
        pg.stop_postgres()
    print(f"\n{machine()}\n")
    print(table(rows))


if __name__ == "__main__":
    main()
