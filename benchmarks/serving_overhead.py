"""Serving overhead: streaming chat on `tiny-chat` through bare vLLM, ray.serve.llm and the MaaS gateway.

One run measures, one server at a time (so only one engine competes for the CPU cores):
  bare     vLLM's own OpenAI server (`python -m vllm.entrypoints.openai.api_server`), a subprocess
  rayllm   ray.serve.llm's `build_openai_app` with its defaults, on a local Ray cluster this script starts
  rayllm0  the same with experimental_configs={"stream_batching_interval_ms": 0}
  gateway  the platform (`maas up`): an already running one, or one this script starts (--start-platform)

For each server and concurrency level (default 1 and 16) it sends N streaming requests (32 at c=1, 64
otherwise) of exactly 32 output tokens (`ignore_eos`), after a few unmeasured warm-ups, and reports
TTFT (send -> first chunk with content) and end-to-end p50/p99, output tokens/s (tokens / level wall
time) and, on gateway rows with --start-platform, the cold start (`maas up` launch -> first 200 answer).
Raw numbers go to benchmarks/results/serving_overhead.json.

Full run (owns every server; the platform must not be running):
    .venv/bin/python benchmarks/serving_overhead.py --start-platform
Against a running platform only:
    .venv/bin/python benchmarks/serving_overhead.py --only gateway --api-key KEY
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine  # noqa: E402  (benchmarks/machine.py, beside this script)
RESULTS = ROOT / "benchmarks" / "results" / "serving_overhead.json"
BIN = Path(sys.executable).parent
PROMPT = "Write a short story about a robot who learns to paint."
ENGINE_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "VLLM_TARGET_DEVICE": "cpu"}
SERVERS = ["bare", "rayllm", "rayllm0", "gateway"]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    k = (len(v) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


# -- load generation -------------------------------------------------------------------------------
def body(max_tokens: int) -> dict:
    return {"model": "tiny-chat", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": max_tokens,
            "stream": True, "ignore_eos": True, "temperature": 0, "stream_options": {"include_usage": True}}


async def one_request(client: httpx.AsyncClient, url: str, headers: dict, max_tokens: int) -> dict:
    t0 = time.perf_counter()
    ttft, chunks, usage_tokens = None, 0, None
    try:
        async with client.stream("POST", url, json=body(max_tokens), headers=headers) as resp:
            if resp.status_code != 200:
                return {"ok": False, "error": f"HTTP {resp.status_code}: {(await resp.aread())[:200]!r}"}
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                event = json.loads(data)
                if event.get("usage"):
                    usage_tokens = event["usage"].get("completion_tokens")
                for choice in event.get("choices") or []:
                    delta = choice.get("delta") or {}
                    if delta.get("content") or delta.get("reasoning_content") or delta.get("reasoning"):
                        chunks += 1
                        if ttft is None:
                            ttft = time.perf_counter() - t0
    except (httpx.HTTPError, json.JSONDecodeError) as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    e2e = time.perf_counter() - t0
    tokens = usage_tokens if usage_tokens is not None else chunks
    return {"ok": ttft is not None, "ttft_ms": ttft * 1000 if ttft else None, "e2e_ms": e2e * 1000,
            "tokens": tokens, "content_chunks": chunks, "usage_tokens": usage_tokens,
            **({} if ttft else {"error": "no content chunk"})}


async def run_level(client: httpx.AsyncClient, url: str, headers: dict, c: int, n: int, max_tokens: int) -> list:
    """n requests, c in flight at any time (a new one starts as soon as one ends)."""
    todo, results = list(range(n)), []

    async def worker():
        while todo:
            todo.pop()
            results.append(await one_request(client, url, headers, max_tokens))

    await asyncio.gather(*(worker() for _ in range(min(c, n))))
    return results


async def bench_server(base_url: str, headers: dict, args) -> dict:
    url = base_url.rstrip("/") + "/v1/chat/completions"
    conns = max(args.concurrency) + 8
    limits = httpx.Limits(max_connections=conns, max_keepalive_connections=conns)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600), limits=limits, trust_env=False) as client:
        for _ in range(args.warmup):
            r = await one_request(client, url, headers, args.max_tokens)
            if not r["ok"]:
                raise RuntimeError(f"warm-up request failed: {r['error']}")
        levels = {}
        for i, c in enumerate(args.concurrency):
            n = args.requests_per_level or args.requests[min(i, len(args.requests) - 1)]
            load = os.getloadavg()[0]
            t0 = time.perf_counter()
            results = await run_level(client, url, headers, c, n, args.max_tokens)
            wall = time.perf_counter() - t0
            ok = [r for r in results if r["ok"]]
            ttft, e2e = [r["ttft_ms"] for r in ok], [r["e2e_ms"] for r in ok]
            levels[c] = {"concurrency": c, "requests": n, "ok": len(ok), "wall_s": wall, "loadavg_1m_before": load,
                         "output_tokens": sum(r["tokens"] for r in ok),
                         "output_tok_s": sum(r["tokens"] for r in ok) / wall,
                         "ttft_p50_ms": pct(ttft, 50), "ttft_p99_ms": pct(ttft, 99),
                         "e2e_p50_ms": pct(e2e, 50), "e2e_p99_ms": pct(e2e, 99),
                         "errors": sorted({r["error"] for r in results if not r["ok"]})[:5], "raw": results}
            log(f"  c={c}: {len(ok)}/{n} ok, {levels[c]['output_tok_s']:.1f} tok/s, "
                f"TTFT p50 {levels[c]['ttft_p50_ms'] or float('nan'):.0f} ms")
        return levels


def answers(base_url: str) -> bool:
    try:
        httpx.get(f"{base_url}/v1/models", timeout=3, trust_env=False)
        return True
    except httpx.TransportError:
        return False


def wait_ready(base_url: str, headers: dict, timeout_s: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode}")
        try:
            if httpx.get(f"{base_url}/v1/models", headers=headers, timeout=5, trust_env=False).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError(f"{base_url} not ready after {timeout_s:.0f} s")


# -- servers: each yields (base_url, headers, startup info) and tears itself down -----------------------
@contextmanager
def bare_vllm(args):
    port = free_port()
    logf = tempfile.NamedTemporaryFile("w", prefix="bare_vllm_", suffix=".log", delete=False)
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", args.model_dir,
           "--served-model-name", "tiny-chat", "--port", str(port), "--max-model-len", "2048", "--enforce-eager"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env={**os.environ, **ENGINE_ENV}, stdout=logf, stderr=subprocess.STDOUT,
                            start_new_session=True)
    log(f"bare vLLM on port {port}, log {logf.name}")
    try:
        wait_ready(f"http://127.0.0.1:{port}", {}, args.start_timeout, proc)
        yield f"http://127.0.0.1:{port}", {}, {"startup_s": time.perf_counter() - t0, "log": logf.name}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@contextmanager
def ray_serve_llm(args, batching_ms: float | None):
    import ray
    from ray import serve
    from ray.serve.llm import LLMConfig, build_openai_app

    if not ray.is_initialized():  # a private local cluster: never join the platform's (RAY_ADDRESS)
        ray.init(address="local", num_cpus=16, include_dashboard=False, log_to_driver=False)
    llm_config = LLMConfig(
        model_loading_config={"model_id": "tiny-chat", "model_source": args.model_dir},
        engine_kwargs={"max_model_len": 2048, "enforce_eager": True},
        placement_group_config={"bundles": [{"CPU": 1}]},
        deployment_config={"ray_actor_options": {"num_cpus": 0},
                           "autoscaling_config": {"min_replicas": 1, "max_replicas": 1}},
        runtime_env={"env_vars": ENGINE_ENV},
        experimental_configs={} if batching_ms is None else {"stream_batching_interval_ms": batching_ms})
    app = build_openai_app({"llm_configs": [llm_config],
                            "ingress_deployment_config": {"ray_actor_options": {"num_cpus": 0}}})
    base_url = f"http://127.0.0.1:{args.ray_serve_port}"
    t0 = time.perf_counter()
    label = "default" if batching_ms is None else batching_ms
    log(f"ray.serve.llm (stream_batching_interval_ms={label}) at {base_url}")
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": args.ray_serve_port})
        serve.run(app, name="rayllm", route_prefix="/")
        wait_ready(base_url, {}, args.start_timeout)
        yield base_url, {}, {"startup_s": time.perf_counter() - t0}
    finally:
        serve.shutdown()


@contextmanager
def gateway(args):
    env = {**os.environ, "MAAS_HOME": str(args.maas_home)}
    if not args.start_platform:  # a running platform (main() checked there is a key)
        yield args.gateway_url, {"Authorization": f"Bearer {args.api_key}"}, {"cold_start_s": None}
        return
    if answers(args.gateway_url):
        raise RuntimeError(f"--start-platform: something already answers at {args.gateway_url}; stop it first")
    maas = str(BIN / "maas")
    t0 = time.perf_counter()
    log("maas up ...")
    try:
        subprocess.run([maas, "up"], env=env, check=True, timeout=args.start_timeout + 600,
                       stdout=subprocess.DEVNULL)
        up_s = time.perf_counter() - t0
        out = subprocess.run([maas, "keys", "create", "--label", f"bench-{int(time.time())}", "--json"],
                             env=env, check=True, capture_output=True, text=True).stdout
        headers = {"Authorization": f"Bearer {json.loads(out)['key']}"}
        req = {**body(args.max_tokens), "stream": False}
        req.pop("stream_options")
        while True:  # cold start ends at the first 200 answer with the new key
            try:
                r = httpx.post(f"{args.gateway_url}/v1/chat/completions", json=req, headers=headers,
                               timeout=120, trust_env=False)
                if r.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.perf_counter() - t0 > args.start_timeout + 900:
                raise TimeoutError("gateway never answered 200")
            time.sleep(0.5)
        cold = time.perf_counter() - t0
        log(f"cold start {cold:.1f} s (maas up returned after {up_s:.1f} s)")
        yield args.gateway_url, headers, {"cold_start_s": cold, "maas_up_s": up_s}
    finally:
        log("maas down")
        subprocess.run([maas, "down"], env=env, stdout=subprocess.DEVNULL)


# -- main ------------------------------------------------------------------------------------------
def table(results: dict) -> str:
    f = lambda v, d=0: "n/a" if v is None else f"{v:.{d}f}"
    rows = ["| server | concurrency | TTFT p50 ms | TTFT p99 ms | e2e p50 ms | e2e p99 ms | output tok/s "
            "| cold start s |", "|---|---|---|---|---|---|---|---|"]
    for name, res in results.items():
        if "error" in res:
            rows.append(f"| {name} | failed: {res['error'][:150]} | | | | | | |")
            continue
        cold = f(res.get("cold_start_s"), 1) if name == "gateway" else ""
        for lv in res["levels"].values():
            rows.append(f"| {name} | {lv['concurrency']} | {f(lv['ttft_p50_ms'])} | {f(lv['ttft_p99_ms'])} | "
                        f"{f(lv['e2e_p50_ms'])} | {f(lv['e2e_p99_ms'])} | {f(lv['output_tok_s'], 1)} | {cold} |")
    return "\n".join(rows)


def parse_args():
    home = Path(os.environ.get("MAAS_HOME", "~/.maas")).expanduser()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default=",".join(SERVERS), help="comma list of " + ",".join(SERVERS))
    p.add_argument("--model-dir", default=str(home / "models" / "tiny-chat"))
    p.add_argument("--maas-home", default=str(home))
    p.add_argument("--gateway-url", default=f"http://127.0.0.1:{os.environ.get('MAAS_PORT', '8000')}")
    p.add_argument("--api-key", default=os.environ.get("MAAS_API_KEY"))
    p.add_argument("--start-platform", action="store_true", help="run `maas up` (and `maas down` at the end)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    p.add_argument("--requests", type=int, nargs="+", default=[32, 64], help="per concurrency level, in order")
    p.add_argument("--requests-per-level", type=int, help="overrides --requests for every level")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--ray-serve-port", type=int, default=8100)
    p.add_argument("--start-timeout", type=float, default=600, help="seconds to wait for a server to be ready")
    p.add_argument("--output", default=str(RESULTS))
    args = p.parse_args()
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    if unknown := set(args.only) - set(SERVERS):
        p.error(f"unknown server(s) in --only: {', '.join(sorted(unknown))}")
    return args


def main() -> None:
    args = parse_args()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Ray turns INFO logging on for every request
    info = machine()
    print(f"machine: {info['cpu_count']} CPUs, {info['cpu_model']} ({info['platform']})", flush=True)
    servers = {"bare": lambda: bare_vllm(args), "rayllm": lambda: ray_serve_llm(args, None),
               "rayllm0": lambda: ray_serve_llm(args, 0), "gateway": lambda: gateway(args)}
    if "gateway" in args.only and not args.start_platform and not args.api_key:
        sys.exit("benchmarking the gateway needs --api-key (or MAAS_API_KEY), or --start-platform")
    if "gateway" in args.only and args.start_platform and answers(args.gateway_url):
        sys.exit(f"--start-platform: something already answers at {args.gateway_url}; stop it first")
    info["platform_running_at_start"] = answers(args.gateway_url)
    if info["platform_running_at_start"] and set(args.only) - {"gateway"}:
        log(f"WARNING: a platform answers at {args.gateway_url}: it shares the CPU with the other servers")
    results: dict = {}
    for name in [s for s in SERVERS if s in args.only]:  # fixed order: the platform last
        if name == "gateway" and "ray" in sys.modules:
            import ray
            ray.shutdown()  # our private Ray cluster must be gone before `maas up` starts its own
        log(f"== {name}")
        try:
            with servers[name]() as (base_url, headers, startup):
                results[name] = {**startup, "base_url": base_url,
                                 "levels": asyncio.run(bench_server(base_url, headers, args))}
        except Exception as exc:  # keep going: one broken server must not lose the others' numbers
            log(f"{name} failed: {type(exc).__name__}: {exc}")
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
    if "ray" in sys.modules:
        import ray
        ray.shutdown()
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    config = {k: v for k, v in vars(args).items() if k != "api_key"}
    out.write_text(json.dumps({"machine": info, "config": config, "prompt": PROMPT,
                               "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "results": results}, indent=1))
    print(f"machine: {info['cpu_count']} CPUs, {info['cpu_model']}")
    print(table(results))
    print(f"raw numbers: {out}")


if __name__ == "__main__":
    main()
