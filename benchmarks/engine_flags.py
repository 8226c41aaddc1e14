"""Bare vLLM's OpenAI server with the platform's engine flags, one flag group at a time, beside plain bare: whether
the flags of the platform's tiny-chat engine (LoRA, tool and reasoning parsers) are where the gateway's streamed
tokens/s go (issue 14). Same load as serving_overhead.py (streaming, 32 tokens, `ignore_eos`), one server at a time.

    .venv/bin/python benchmarks/engine_flags.py [MODEL_DIR] [ROUNDS]
"""
import argparse
import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serving_overhead as so  # noqa: E402

MODEL = sys.argv[1] if len(sys.argv) > 1 else str(Path("~/.maas/models/tiny-chat").expanduser())
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 1
VARIANTS = {
    "plain": [],
    "lora": ["--enable-lora", "--max-loras", "4", "--max-lora-rank", "16"],
    "parsers": ["--enable-auto-tool-choice", "--tool-call-parser", "hermes", "--reasoning-parser", "qwen3"],
    "platform": ["--enable-lora", "--max-loras", "4", "--max-lora-rank", "16", "--enable-auto-tool-choice",
                 "--tool-call-parser", "hermes", "--reasoning-parser", "qwen3"],
}
args = argparse.Namespace(concurrency=[1, 16], requests=[96], requests_per_level=96, warmup=32, max_tokens=32,
                          model_dir=MODEL, start_timeout=400)
rows = []
for rnd in range(ROUNDS):
    for name, flags in VARIANTS.items():
        with so.bare_vllm(args, tuple(flags)) as (base_url, headers, _startup):
            levels = asyncio.run(so.bench_server(base_url, headers, args))
        for c, lv in levels.items():
            rows.append((rnd, name, c, lv["output_tok_s"], lv["ttft_p50_ms"], lv["e2e_p50_ms"]))
            print(rows[-1], flush=True)
print("| variant | c | tok/s (rounds) | TTFT p50 ms | e2e p50 ms |\n|---|---|---|---|---|")
for name in VARIANTS:
    for c in (1, 16):
        r = [x for x in rows if x[1] == name and x[2] == c]
        print(f"| {name} | {c} | {' / '.join(f'{x[3]:.0f}' for x in r)} | {' / '.join(f'{x[4]:.0f}' for x in r)} | {' / '.join(f'{x[5]:.0f}' for x in r)} |")
