"""Serving overhead: streaming chat on `tiny-chat` through bare vLLM, ray.serve.llm and the MaaS gateway.

One run measures, one server at a time (so only one engine competes for the CPU cores):
  bare     vLLM's own OpenAI server (`python -m vllm.entrypoints.openai.api_server`), a subprocess
  bare-uni the same with vLLM's worker inside its engine core process, as the platform runs CPU engines
  rayllm   ray.serve.llm's `build_openai_app` with its defaults, on a local Ray cluster this script starts
  rayllm0  the same with experimental_configs={"stream_batching_interval_ms": 0}
  gateway  the platform (`maas up`): an already running one, or one this script starts (--start-platform) on
           a Ray head of its own (own ports, stopped by pid); its cold start counts that head's start too. Its
           tiny-chat runs on one engine replica, as bare and rayllm do (maas.yaml lets it autoscale to two, and
           a second engine starting mid-level takes the cores); --platform-env MAAS_SERVE_CONFIG=... overrides
  gateway-*  the same platform with one lever changed (VARIANTS below), with --start-platform only

For each server and concurrency level (default 1, 16 and 64) it sends N streaming requests (default 256)
of exactly 32 output tokens (`ignore_eos`), each level after an unmeasured warm-up at that same concurrency
(a first batch of c requests pays the engine's warm-up: without it, c=16 on bare vLLM read 637 tok/s
instead of ~3,000), and reports TTFT (send -> first chunk with content) and end-to-end p50/p99, output
tokens/s (tokens / level wall time) and, on gateway rows with --start-platform, the cold start (`maas up`
launch -> first 200 answer). Rounds are interleaved (default 3: every server once per round, each round in
a rotated order, each server started afresh): the table shows the median over rounds and the spread
(min-max), so one noisy minute on a shared machine does not decide a comparison.
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
import shutil
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
from serve_apps.settings import ray_node_env  # noqa: E402
RESULTS = ROOT / "benchmarks" / "results" / "serving_overhead.json"
BIN = Path(sys.executable).parent
PROMPT = "Write a short story about a robot who learns to paint."
ENGINE_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "VLLM_TARGET_DEVICE": "cpu"}
# The platform with settings changed (each starts a platform of its own, --start-platform only): levers.
#   gateway-serve  MAAS_DIRECT_STREAMS=0: every streamed batch through Serve, as before serve_apps.direct_stream
#   gateway-separate-loops  Serve's replicas run user code in a thread of its own and their handles' router on
#                  a loop of its own, the GC not frozen: Ray's defaults (the platform's before 2026-12-06 20:10 UTC,
#                  serve_apps.settings RAY_NODE_ENV)
SEPARATE_LOOPS = ["RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD=1", "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP=1",
                  "RAY_SERVE_FREEZE_GC_ON_STARTUP=0"]
#   gateway-throughput  Ray's whole "throughput optimized" mode (RAY_SERVE_THROUGHPUT_OPTIMIZED=1): the platform's
#                       settings, and access logs buffered (1,000 lines) and not copied to stderr
THROUGHPUT = ["RAY_SERVE_THROUGHPUT_OPTIMIZED=1"]
#   gateway-proxy-actor  Serve's proxy actor on the platform's port (RAY_SERVE_ENABLE_HA_PROXY=0), not HAProxy (the
#                        platform's default before 2026-12-06 16:00 UTC)
#   gateway-actor-calls  Serve's proxy actor, and Serve's calls (proxy -> gateway, gateway -> engine) as Ray actor
#                        calls, every streamed item a Ray object (the platform's default before 2026-12-06)
PROXY_ACTOR = ["RAY_SERVE_ENABLE_HA_PROXY=0"]
ACTOR_CALLS = [*PROXY_ACTOR, "RAY_SERVE_PROXY_USE_GRPC=0", "MAAS_SERVE_GRPC=0"]
VARIANTS = {"gateway-serve": ["MAAS_DIRECT_STREAMS=0"], "gateway-separate-loops": SEPARATE_LOOPS,
            "gateway-throughput": THROUGHPUT, "gateway-proxy-actor": PROXY_ACTOR, "gateway-actor-calls": ACTOR_CALLS}
# bare vLLM with its worker inside the engine core process, as the platform's CPU engines run it
# (serve_apps.model_app; benchmarks/engine_process.py): bare's default `mp` sends a c=1 stream's first chunk late
UNI = (("--distributed-executor-backend", "uni"), {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"})
SERVERS = ["bare", "bare-uni", "rayllm", "rayllm0", "gateway", *VARIANTS]


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
    ttft, chunks, usage_tokens, answer_id = None, 0, None, None
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
                answer_id = answer_id or event.get("id")
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
    return {"ok": ttft is not None, "id": answer_id, "ttft_ms": ttft * 1000 if ttft else None, "e2e_ms": e2e * 1000,
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
        levels = {}
        for i, c in enumerate(args.concurrency):
            n = args.requests_per_level or args.requests[min(i, len(args.requests) - 1)]
            warm = await run_level(client, url, headers, c, max(args.warmup, 2 * c), args.max_tokens)
            if not any(r["ok"] for r in warm):
                raise RuntimeError(f"warm-up at c={c} failed: {warm[0]['error']}")
            load = os.getloadavg()[0]
            t0 = time.perf_counter()
            results = await run_level(client, url, headers, c, n, args.max_tokens)
            wall = time.perf_counter() - t0
            ok = [r for r in results if r["ok"]]
            ttft, e2e = [r["ttft_ms"] for r in ok], [r["e2e_ms"] for r in ok]
            levels[c] = {"concurrency": c, "requests": n, "ok": len(ok), "wall_s": wall, "loadavg_1m_before": load,
                         "warmup_requests": len(warm),
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
def bare_vllm(args, flags: tuple[str, ...] = (), env: dict | None = None):
    """vLLM's own OpenAI server on args.model_dir, with extra server flags and environment
    (benchmarks/engine_flags.py, engine_process.py)."""
    port = free_port()
    logf = tempfile.NamedTemporaryFile("w", prefix="bare_vllm_", suffix=".log", delete=False)
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", args.model_dir,
           "--served-model-name", "tiny-chat", "--port", str(port), "--max-model-len", "2048", "--enforce-eager",
           *flags]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env={**os.environ, **ENGINE_ENV, **(env or {})}, stdout=logf, stderr=subprocess.STDOUT,
                            start_new_session=True)
    log(f"bare vLLM on port {port}, log {logf.name}")
    try:
        wait_ready(f"http://127.0.0.1:{port}", {}, args.start_timeout, proc)
        yield f"http://127.0.0.1:{port}", {}, {"startup_s": time.perf_counter() - t0, "log": logf.name,
                                              "pid": proc.pid}
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
        ray.shutdown()  # no idle Ray cluster beside the next server


@contextmanager
def private_ray_head(platform_env: dict):
    """A Ray head of this run's own (own ports and temp dir) for `maas up` to join through RAY_ADDRESS, stopped
    by pid at the end: `maas down` of a cluster it started runs `ray stop`, which stops every cluster here.
    The head gets the platform's MAAS_* settings: the control plane's processes read them from the cluster."""
    import psutil

    port, temp = free_port(), tempfile.mkdtemp(prefix="maas-bench-ray-")
    cmd = [str(BIN / "ray"), "start", "--head", f"--port={port}", f"--temp-dir={temp}", "--num-cpus=16",
           f"--dashboard-port={free_port()}", f"--ray-client-server-port={free_port()}",
           f"--dashboard-agent-listen-port={free_port()}", "--disable-usage-stats", "--dashboard-host=127.0.0.1"]
    env = ray_node_env({k: v for k, v in platform_env.items() if k != "RAY_ADDRESS"})  # as `maas up` starts Ray
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=300)
    try:
        yield f"127.0.0.1:{port}", time.perf_counter() - t0
    finally:
        roots = [p for p in psutil.process_iter(["cmdline"])
                 if any(temp in arg or arg.endswith(f":{port}") for arg in p.info["cmdline"] or [])]
        victims = {p.pid: p for root in roots for p in [root, *root.children(recursive=True)]}
        for proc in victims.values():
            try:
                proc.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(list(victims.values()), timeout=30)


def tiny_chat_config(changes: dict | None = None) -> str:
    """MAAS_SERVE_CONFIG=<a copy of maas.yaml with tiny-chat on one engine replica, like the other servers here,
    and `changes` to its args>. maas.yaml lets tiny-chat's autoscaler add a second replica: under these loads it
    does, and that engine's start-up takes the two cores in the middle of the measured levels."""
    import yaml

    config = yaml.safe_load((ROOT / "ray_configs" / "maas.yaml").read_text())
    for app in config["applications"]:
        if app["name"] == "tiny-chat":
            app["args"].update({"autoscale": "off", "min_replicas": 1, "max_replicas": 1, **(changes or {})})
    path = Path(tempfile.mkdtemp(prefix="bench-serve-config-")) / "maas.yaml"
    path.write_text(yaml.safe_dump(config))
    return f"MAAS_SERVE_CONFIG={path}"


@contextmanager
def gateway(args):
    if not args.start_platform:  # a running platform (main() checked there is a key)
        yield args.gateway_url, {"Authorization": f"Bearer {args.api_key}"}, {"cold_start_s": None}
        return
    if answers(args.gateway_url):
        raise RuntimeError(f"--start-platform: something already answers at {args.gateway_url}; stop it first")
    # A fresh MAAS_HOME each start (new database and admin key), the built models shared from --maas-home.
    home = Path(tempfile.mkdtemp(prefix="maas-bench-home-"))
    (home / "models").symlink_to(Path(args.maas_home, "models").resolve())
    try:
        extra = dict(item.split("=", 1) for item in getattr(args, "platform_env", None) or [])
        env = {**{k: v for k, v in os.environ.items() if not k.startswith(("MAAS_", "RAY_"))}, "MAAS_HOME": str(home),
               "RAY_AUTH_MODE": "disabled", "MAAS_PORT": args.gateway_url.rsplit(":", 1)[-1],
               "MAAS_SERVE_CONFIG": tiny_chat_config().split("=", 1)[1], **extra}
        with private_ray_head(env) as (address, head_s):
            env["RAY_ADDRESS"] = address
            with _platform(args, env, head_s) as (base_url, headers, startup):
                yield base_url, headers, {**startup, "maas_home": str(home)}
    finally:
        shutil.rmtree(home, ignore_errors=True)


@contextmanager
def _platform(args, env: dict, head_s: float):
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
        cold = time.perf_counter() - t0 + head_s
        log(f"cold start {cold:.1f} s (Ray head {head_s:.1f} s; maas up returned after {up_s:.1f} s)")
        yield args.gateway_url, headers, {"cold_start_s": cold, "maas_up_s": up_s, "ray_head_s": head_s}
    finally:
        log("maas down")
        subprocess.run([maas, "down"], env=env, stdout=subprocess.DEVNULL)


# -- main ------------------------------------------------------------------------------------------
def summary(rounds: list[dict]) -> dict:
    """Per server and concurrency: the median over rounds of each figure, and its min and max."""
    out: dict = {}
    for name in {name for r in rounds for name in r}:
        runs = [r[name] for r in rounds if name in r]
        good = [run for run in runs if "error" not in run]
        entry = {"rounds": len(runs), "failed_rounds": [run["error"] for run in runs if "error" in run],
                 "cold_start_s": [run["cold_start_s"] for run in good if run.get("cold_start_s") is not None],
                 "levels": {}}
        for c in sorted({c for run in good for c in run["levels"]}):
            lvs = [run["levels"][c] for run in good if c in run["levels"]]
            entry["levels"][c] = {"errors": sum(lv["requests"] - lv["ok"] for lv in lvs), **{
                key: {"median": pct(vals, 50), "min": min(vals), "max": max(vals)} if vals else None
                for key in ("ttft_p50_ms", "ttft_p99_ms", "e2e_p50_ms", "output_tok_s")
                for vals in [[lv[key] for lv in lvs if lv[key] is not None]]}}
        out[name] = entry
    return out


def table(summary_: dict) -> str:
    def f(stat, d=0):
        if not stat:
            return "n/a"
        return f"{stat['median']:,.{d}f} ({stat['min']:,.{d}f}-{stat['max']:,.{d}f})"

    rows = ["| server | c | TTFT p50 ms | TTFT p99 ms | e2e p50 ms | output tok/s | errors | rounds | cold start s |",
            "|---|---|---|---|---|---|---|---|---|"]
    for name in [s for s in SERVERS if s in summary_]:
        res = summary_[name]
        cold = ", ".join(f"{v:.0f}" for v in res["cold_start_s"]) if name.startswith("gateway") else ""
        if not res["levels"]:
            rows.append(f"| {name} | failed: {'; '.join(res['failed_rounds'])[:150]} | | | | | | | |")
        for c, lv in res["levels"].items():
            rounds = f"{res['rounds'] - len(res['failed_rounds'])}/{res['rounds']}"
            rows.append(f"| {name} | {c} | {f(lv['ttft_p50_ms'], 1)} | {f(lv['ttft_p99_ms'])} | {f(lv['e2e_p50_ms'])} "
                        f"| {f(lv['output_tok_s'])} | {lv['errors']} | {rounds} | {cold} |")
    return "\n".join(rows) + "\n(median over rounds, min-max in parentheses)"


def parse_args():
    home = Path(os.environ.get("MAAS_HOME", "~/.maas")).expanduser()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default=",".join(SERVERS), help="comma list of " + ",".join(SERVERS))
    p.add_argument("--model-dir", default=str(home / "models" / "tiny-chat"))
    p.add_argument("--maas-home", default=str(home))
    p.add_argument("--gateway-url", default=f"http://127.0.0.1:{os.environ.get('MAAS_PORT', '8000')}")
    p.add_argument("--api-key", default=os.environ.get("MAAS_API_KEY"))
    p.add_argument("--start-platform", action="store_true", help="run `maas up` (and `maas down` at the end)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    p.add_argument("--requests", type=int, nargs="+", default=[256], help="per concurrency level, in order")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds: every server once per round")
    p.add_argument("--requests-per-level", type=int, help="overrides --requests for every level")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--warmup", type=int, default=4, help="warm-up requests per level (at least 2 x c)")
    p.add_argument("--ray-serve-port", type=int, default=8100)
    p.add_argument("--start-timeout", type=float, default=600, help="seconds to wait for a server to be ready")
    p.add_argument("--output", default=str(RESULTS))
    p.add_argument("--platform-env", nargs="*", default=[], metavar="KEY=VALUE",
                   help="settings for the started platform and its Ray head (VARIANTS are named sets of them)")
    args = p.parse_args()
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    if unknown := set(args.only) - set(SERVERS):
        p.error(f"unknown server(s) in --only: {', '.join(sorted(unknown))}")
    return args


def _variant(args, env: list[str]):
    return lambda: gateway(argparse.Namespace(**{**vars(args), "platform_env": [*args.platform_env, *env]}))


def main() -> None:
    args = parse_args()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Ray turns INFO logging on for every request
    info = machine()
    print(f"machine: {info['cpu_count']} CPUs, {info['cpu_model']} ({info['platform']})", flush=True)
    servers = {"bare": lambda: bare_vllm(args), "bare-uni": lambda: bare_vllm(args, *UNI),
               "rayllm": lambda: ray_serve_llm(args, None), "rayllm0": lambda: ray_serve_llm(args, 0),
               "gateway": lambda: gateway(args),
               **{name: _variant(args, env) for name, env in VARIANTS.items()}}
    if "gateway" in args.only and not args.start_platform and not args.api_key:
        sys.exit("benchmarking the gateway needs --api-key (or MAAS_API_KEY), or --start-platform")
    if set(VARIANTS) & set(args.only) and not args.start_platform:
        sys.exit(f"{', '.join(sorted(set(VARIANTS) & set(args.only)))} start a platform of their own: "
                 "they need --start-platform")
    if "gateway" in args.only and args.start_platform and answers(args.gateway_url):
        sys.exit(f"--start-platform: something already answers at {args.gateway_url}; stop it first")
    info["platform_running_at_start"] = answers(args.gateway_url)
    if info["platform_running_at_start"] and set(args.only) - {"gateway"}:
        log(f"WARNING: a platform answers at {args.gateway_url}: it shares the CPU with the other servers")
    names = [s for s in SERVERS if s in args.only]
    rounds: list[dict] = []
    for number in range(args.rounds):
        order = names[number % len(names):] + names[:number % len(names)]  # interleaved: rotate each round
        results: dict = {}
        for name in order:
            log(f"== round {number + 1}/{args.rounds}: {name}")
            try:
                with servers[name]() as (base_url, headers, startup):
                    results[name] = {**startup, "base_url": base_url,
                                     "levels": asyncio.run(bench_server(base_url, headers, args))}
            except Exception as exc:  # keep going: one broken server must not lose the others' numbers
                log(f"{name} failed: {type(exc).__name__}: {exc}")
                results[name] = {"error": f"{type(exc).__name__}: {exc}"}
        rounds.append(results)
    summarized = summary(rounds)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    config = {k: v for k, v in vars(args).items() if k != "api_key"}
    out.write_text(json.dumps({"machine": info, "config": config, "prompt": PROMPT,
                               "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "summary": summarized,
                               "rounds": rounds}, indent=1))
    print(f"machine: {info['cpu_count']} CPUs, {info['cpu_model']}")
    print(table(summarized))
    print(f"raw numbers: {out}")


if __name__ == "__main__":
    main()
