"""Where a streamed call's time to first token goes at concurrency 1 (issue 14: TTFT p50 <= bare + 10 ms).

Starts bare vLLM with the platform's engine layout (serving_overhead's `bare-uni`), then the platform (like
serving_overhead.py --start-platform), and sends each N sequential streaming chat requests of 32 tokens after a
warm-up. Every platform call's client-side TTFT (send -> first content chunk) is set beside the gateway's own
record of the same call (usage_records, matched by the answer's id `chatcmpl-<request id>`):
  engine leg   the record's `ttft_ms`: from the call's admission to its first batch at the gateway (the Serve
               handle call, the engine replica, ray.serve.llm and vLLM, the first batch's way back through Serve)
  replica wait the record's `replica_wait_ms`: the part of the engine leg until a replica took the call
  front leg    client TTFT - engine leg: the Serve proxy, the gateway's HTTP handling, strict body parsing,
               admission (the accounting actor's round trip), and the first chunk's way out through the proxy
Bare vLLM's TTFT is everything it does (HTTP, its OpenAI serving code, the engine) for the same request.

    .venv/bin/python benchmarks/ttft_breakdown.py --maas-home ~/.cache/maas-tests
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sqlite3
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serving_overhead as so  # noqa: E402  (beside this script)
from machine import machine  # noqa: E402

RESULTS = so.ROOT / "benchmarks" / "results" / "ttft_breakdown.json"


async def sequential(base_url: str, headers: dict, n: int, max_tokens: int) -> list[dict]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(120), trust_env=False) as client:
        return [await so.one_request(client, base_url + "/v1/chat/completions", headers, max_tokens)
                for _ in range(n)]


def records(maas_home: str, ids: list[str], timeout_s: float = 30) -> dict[str, sqlite3.Row]:
    """The platform's usage records of these calls, once all are written (settlement is asynchronous)."""
    wanted = {i.removeprefix("chatcmpl-") for i in ids}
    deadline = time.time() + timeout_s
    while True:
        with sqlite3.connect(Path(maas_home) / "maas.db") as db:
            db.row_factory = sqlite3.Row
            rows = {r["request_id"]: r for r in db.execute("SELECT request_id, ttft_ms, replica_wait_ms "
                                                           "FROM usage_records WHERE stream = 1")
                    if r["request_id"] in wanted}
        if len(rows) == len(wanted) or time.time() > deadline:
            return rows
        time.sleep(0.5)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--maas-home", default=str(Path("~/.maas").expanduser()), help="where the built models are")
    p.add_argument("--requests", type=int, default=128)
    p.add_argument("--warmup", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--gateway-url", default="http://127.0.0.1:8471")
    p.add_argument("--start-timeout", type=float, default=600)
    p.add_argument("--output", default=str(RESULTS))
    args = p.parse_args()
    args.model_dir = str(Path(args.maas_home, "models", "tiny-chat"))
    args.start_platform, args.platform_env = True, []
    logging.getLogger("httpx").setLevel(logging.WARNING)
    info = machine()
    print(f"machine: {info['cpu_count']} CPUs, {info['cpu_model']} ({info['platform']})", flush=True)

    def measure(base_url: str, headers: dict) -> list[dict]:
        asyncio.run(sequential(base_url, headers, args.warmup, args.max_tokens))
        calls = asyncio.run(sequential(base_url, headers, args.requests, args.max_tokens))
        if bad := [c for c in calls if not c["ok"]]:
            raise RuntimeError(f"{len(bad)} of {len(calls)} calls failed: {bad[0].get('error')}")
        return calls

    with so.bare_vllm(args, *so.UNI) as (base_url, headers, _startup):
        bare = [c["ttft_ms"] for c in measure(base_url, headers)]
    with so.gateway(args) as (base_url, headers, startup):
        calls = measure(base_url, headers)
        rows = records(startup["maas_home"], [c["id"] for c in calls])
    paired = [(c["ttft_ms"], row) for c in calls if (row := rows.get(c["id"].removeprefix("chatcmpl-")))]
    client = [t for t, _ in paired]
    engine = [r["ttft_ms"] for _, r in paired]
    wait = [r["replica_wait_ms"] or 0.0 for _, r in paired]
    front = [t - r["ttft_ms"] for t, r in paired]
    table = {"bare-uni TTFT (everything)": bare, "platform TTFT (client)": client,
             "  engine leg (gateway's ttft_ms)": engine, "    of it: replica wait": wait,
             "  front leg (client - engine leg)": front}
    print(f"\n{len(paired)} of {len(calls)} platform calls matched to their usage record\n")
    print("| part | p50 ms | p90 ms | mean ms |\n|---|---|---|---|")
    for name, values in table.items():
        print(f"| {name} | {so.pct(values, 50):.1f} | {so.pct(values, 90):.1f} | {sum(values) / len(values):.1f} |")
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": info, "config": vars(args), "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                               "ms": table}, indent=1))
    print(f"raw numbers: {out}")


if __name__ == "__main__":
    main()
