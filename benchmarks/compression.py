"""Compression: the original tiny-chat and each strategy's output, side by side in one run.

For each strategy it runs the real job (`.venv-compress/bin/python -m quantize.compress`, the built-in
calibration set, default 64 samples of <= 512 tokens) and times it. Then, for the original and each output,
one at a time in a fresh process, a vLLM engine (the platform's CPU settings) measures:
  size      bytes on disk of the model directory
  load s    engine construction (weights, kernels, KV cache) until it can generate
  ppl       perplexity on held-out conversations (tiny-chat's own format, a seed neither its training nor the
            calibration used), from vLLM's prompt logprobs
  agree     greedy agreement with the original: identical 16-token answers over 64 prompts
  tok/s c1  output tokens/s, one request at a time (64 tokens each, ignore_eos)
  tok/s c16 output tokens/s, 16 requests at once
Raw numbers go to benchmarks/results/compression.json.

    .venv/bin/python benchmarks/compression.py [--samples 64] [--prompts 64]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
# The project's packages first, and not this folder: benchmarks/autoscaling.py would shadow the package.
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != HERE]

STRATEGIES = ["smoothquant-w8a8", "awq-w4a16", "gptq-w4a16"]
TARGETS = {"smoothquant-w8a8": (0.03, 0.90), "awq-w4a16": (0.10, 0.75), "gptq-w4a16": (0.10, 0.75)}


def held_out(n: int) -> list[str]:
    """Conversations rendered as tiny-chat was trained on them, from a seed of their own."""
    from transformers import AutoTokenizer

    from serve_apps.tiny_chat import _conversation

    rng = random.Random(20261201)
    tok = AutoTokenizer.from_pretrained(tiny_chat_dir())
    texts = []
    for _ in range(n):
        messages, tools, thinking, reply = _conversation(rng)
        texts.append(tok.apply_chat_template(messages + [{"role": "assistant", "content": reply}], tools=tools,
                                             tokenize=False, enable_thinking=thinking))
    return texts


def prompts(n: int) -> list[list[dict]]:
    from serve_apps.tiny_chat import _THINGS, _sentence

    rng = random.Random(7)
    return [[{"role": "user", "content": f"what is the color of the {_THINGS[i % len(_THINGS)]} ?"
              if i % 2 == 0 else _sentence(rng)}] for i in range(n)]


def tiny_chat_dir() -> Path:
    from serve_apps.catalog import builtin, ensure_built
    from serve_apps.settings import PlaneSettings

    return Path(ensure_built(builtin("tiny-chat"), PlaneSettings().models_dir))


def measure(model_dir: str, n_texts: int, n_prompts: int) -> dict:
    """Run in a child process: one engine, every figure of one model."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm import LLM, SamplingParams

    started = time.perf_counter()
    llm = LLM(model=model_dir, max_model_len=2048, enforce_eager=True, seed=0)
    load_s = time.perf_counter() - started
    nll, count = 0.0, 0
    for out in llm.generate(held_out(n_texts), SamplingParams(max_tokens=1, prompt_logprobs=0), use_tqdm=False):
        for position, logprobs in zip(out.prompt_token_ids[1:], out.prompt_logprobs[1:]):
            nll -= logprobs[position].logprob
            count += 1
    chats = prompts(n_prompts)
    greedy = [o.outputs[0].text for o in llm.chat(chats, SamplingParams(max_tokens=16, temperature=0),
                                                   use_tqdm=False, chat_template_kwargs={"enable_thinking": False})]
    fixed = SamplingParams(max_tokens=64, ignore_eos=True, temperature=0)
    t0 = time.perf_counter()
    one = sum(len(llm.chat([c], fixed, use_tqdm=False)[0].outputs[0].token_ids) for c in chats[:8])
    c1 = one / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    many = sum(len(o.outputs[0].token_ids) for _ in range(2) for o in llm.chat(chats[:16], fixed, use_tqdm=False))
    c16 = many / (time.perf_counter() - t0)
    import math

    return {"load_s": load_s, "ppl": math.exp(nll / count), "greedy": greedy, "tok_s_c1": c1, "tok_s_c16": c16}


def size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=64, help="calibration samples per job")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--texts", type=int, default=200, help="held-out conversations for perplexity")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(measure(args.child[0], int(args.child[1]), int(args.child[2]))))
        return
    import importlib.util

    import yaml

    spec = importlib.util.spec_from_file_location("bench_machine", HERE / "machine.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    machine = module.machine

    work = Path(tempfile.mkdtemp(prefix="maas-bench-compress-"))
    original = tiny_chat_dir()
    python = ROOT / ".venv-compress" / "bin" / "python"
    models = {"original": (original, None)}
    for strategy in STRATEGIES:
        out = work / strategy
        config = work / f"{strategy}.yaml"
        config.write_text(yaml.safe_dump({"name": f"bench-{strategy.split('-')[0]}", "strategy": strategy,
                                          "base_model_path": str(original), "output_dir": str(out),
                                          "num_samples": args.samples}))
        t0 = time.perf_counter()
        done = subprocess.run([str(python), "-m", "quantize.compress", "--config", str(config)], cwd=ROOT,
                              capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        if done.returncode:
            print(done.stdout[-3000:], done.stderr[-3000:])
            raise SystemExit(f"{strategy} failed")
        models[strategy] = (out / "model", seconds)
    rows = {}
    for name, (path, seconds) in models.items():
        done = subprocess.run([sys.executable, __file__, "--child", str(path), str(args.texts), str(args.prompts)],
                              capture_output=True, text=True, cwd=ROOT)
        line = next((ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            print(done.stdout[-3000:], done.stderr[-3000:])
            raise SystemExit(f"measuring {name} failed")
        rows[name] = json.loads(line[7:]) | {"bytes": size(path), "compress_s": seconds}
    base = rows["original"]
    print(f"\nmachine: {json.dumps(machine())}\n")
    print("| model | size MiB | compress s | load s | ppl | ppl vs original | greedy agree | tok/s c=1 | tok/s c=16 |"
          " target (ppl, agree) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        agree = sum(a == b for a, b in zip(r["greedy"], base["greedy"])) / len(base["greedy"])
        r["agreement"] = agree
        delta = r["ppl"] / base["ppl"] - 1
        target = TARGETS.get(name)
        verdict = "" if not target else (
            f"≤ +{target[0]:.0%}, ≥ {target[1]:.0%}: "
            + ("met" if delta <= target[0] and agree >= target[1] else "MISSED"))
        print(f"| {name} | {r['bytes'] / 2**20:.2f} | {r['compress_s'] or 0:.1f} | {r['load_s']:.1f} | {r['ppl']:.3f} |"
              f" {delta:+.2%} | {agree:.0%} | {r['tok_s_c1']:.0f} | {r['tok_s_c16']:.0f} | {verdict} |")
    results = ROOT / "benchmarks" / "results"
    results.mkdir(exist_ok=True)
    (results / "compression.json").write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
