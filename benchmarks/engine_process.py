"""Where vLLM's CPU worker runs: in a process of its own (vLLM's default on CPU, the `mp` executor: the engine
core process schedules, a `VLLM::Worker` process runs the model, they talk over shared memory) or inside the
engine core process (`uni`: VLLM_ENABLE_V1_MULTIPROCESSING=0 and --distributed-executor-backend uni; AsyncLLM
still runs the engine core in a process apart from the API server). One process fewer per engine: less to start
(cold start of `maas up`, two engines on two cores), less memory, one hop fewer per step (issue 14).

Bare vLLM's OpenAI server, tiny-chat, streaming, 32 tokens, `ignore_eos`, the variants interleaved round by
round; start-up is the time from the command to the first answer of /v1/models; memory is the RSS of the
server's process tree after the load.

    .venv/bin/python benchmarks/engine_process.py [MODEL_DIR] [ROUNDS]
"""
import argparse
import asyncio
import statistics
import sys
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serving_overhead as so  # noqa: E402

MODEL = sys.argv[1] if len(sys.argv) > 1 else str(Path("~/.maas/models/tiny-chat").expanduser())
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 3
VARIANTS = {
    "mp (default)": ((), {}),
    "uni": so.UNI,
}
args = argparse.Namespace(concurrency=[1, 16], requests=[128], requests_per_level=128, warmup=32, max_tokens=32,
                          model_dir=MODEL, start_timeout=400)


def tree_rss_mib(pid: int) -> tuple[float, int]:
    root = psutil.Process(pid)
    procs = [root, *root.children(recursive=True)]
    return sum(p.memory_info().rss for p in procs) / 2**20, len(procs)


rows = []
for rnd in range(ROUNDS):
    for name, (flags, env) in VARIANTS.items():
        with so.bare_vllm(args, flags, env) as (base_url, headers, startup):
            levels = asyncio.run(so.bench_server(base_url, headers, args))
            rss, procs = tree_rss_mib(startup["pid"])
        rows.append({"round": rnd, "variant": name, "startup_s": startup["startup_s"], "rss_mib": rss,
                     "processes": procs, **{f"tok_s_{c}": lv["output_tok_s"] for c, lv in levels.items()},
                     **{f"ttft_{c}": lv["ttft_p50_ms"] for c, lv in levels.items()},
                     "errors": sum(lv["requests"] - lv["ok"] for lv in levels.values())})
        print(rows[-1], flush=True)


def cell(name: str, key: str, fmt: str = "{:.0f}") -> str:
    values = [r[key] for r in rows if r["variant"] == name]
    return f"{fmt.format(statistics.median(values))} ({' / '.join(fmt.format(v) for v in values)})"


print("\n| worker | start-up s | processes | RSS MiB | c=1 tok/s | c=1 TTFT p50 ms | c=16 tok/s | errors |")
print("|---|---|---|---|---|---|---|---|")
for name in VARIANTS:
    print(f"| {name} | {cell(name, 'startup_s', '{:.1f}')} | {cell(name, 'processes')} | {cell(name, 'rss_mib')} "
          f"| {cell(name, 'tok_s_1')} | {cell(name, 'ttft_1')} | {cell(name, 'tok_s_16')} "
          f"| {sum(r['errors'] for r in rows if r['variant'] == name)} |")
print("(median, then each round)")
