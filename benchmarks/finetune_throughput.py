"""Fine-tuning throughput: the platform's LoRA and full recipes on tiny-chat against a plain PyTorch loop.

One run measures, one after the other (never two trainings at once), for each recipe (lora, full):
  plain     a single-process transformers/PEFT loop in this process: padded batch -> model(labels=...) ->
            backward -> clip_grad_norm_ -> AdamW.step -> cosine LR step, loss.item() every step; it runs
            before and after the platform jobs and its figure is over both runs (a drift of the machine's
            speed during the run then does not favour one side)
  platform  the real entrypoint, `train_jobs.finetune.run(FinetuneConfig)` (validation, encoding, Ray Train
            TorchTrainer on CPU/gloo, train_jobs.train_loop, metrics.jsonl, status.json, checkpoint, export),
            with 1 and 2 workers, on a private local Ray cluster this script starts first (`ray.init(
            address="local", num_cpus=cores, _temp_dir=<new temp dir>)`; never an existing cluster, never
            `ray stop`), so both sides run beside the same idle Ray daemons

Both sides get the same model directory, the same encoded samples (train_jobs' own encoding of one
generated Alpaca dataset), the same global batches in the same order (train_jobs.schedule), the same
AdamW (lr, weight decay), gradient clipping and cosine schedule, and for LoRA the same PEFT LoraConfig
(train_jobs.config.LoraSettings defaults: r 8, alpha 16, dropout 0.05, every linear layer).

Throughput is steady state: tokens of the steps after the first --warmup steps, divided by the wall time
from the end of the last warm-up step to the end of the last step. For the platform the step end times
are metrics.jsonl's `elapsed_s` (wall clock of the worker loop), so everything the loop does between steps
(metrics.jsonl, status.json, the log line, a checkpoint if one falls inside) is counted; Ray and worker
start-up, model loading, the warm-up steps and the final checkpoint/export are not (they are shown apart
as the job's wall time). Tokens are input tokens without padding, as metrics.jsonl counts them; with 2
workers they are the tokens of the whole global batch. "other CPU load" is the CPU time used by processes
outside this script's process tree (other users, hypervisor steal) while the row ran, in cores: rows with
more than ~0.1 were disturbed.

Thread policy (it matters on a few cores): every training process gets max(1, cores // processes) torch
threads. The plain loop calls torch.set_num_threads(cpus). The platform jobs are configured as the control
plane configures them (no resources_per_worker), and train_jobs.train_loop.cpu_threads gives each CPU worker
its share of the node's cores (before that, Ray's OMP_NUM_THREADS = the worker's logical CPUs = 1 applied:
56-61% of the plain loop with 1 worker on 2 cores). The threads column of platform rows is what rank 0
reported in its log. --explicit-cpus asks for resources_per_worker={"CPU": cpus // workers} instead.

    .venv/bin/python benchmarks/finetune_throughput.py                 # tiny-chat found or built, ~4 min
    .venv/bin/python benchmarks/finetune_throughput.py --model DIR --steps 60 --batch-size 32
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import OtherLoad, machine  # noqa: E402  (benchmarks/machine.py, beside this script)
sys.path.insert(0, str(ROOT))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private, short-lived cluster (as the tests start theirs)

_WORDS = ("the a an of to and in is it you that he was for on are with as his they be at one have this from "
          "or had by word but what some we can out other were all there when up use your how said each she "
          "which do their time if will way about many then them write would like so these her long make thing "
          "see him two has look more day could go come did number sound no most people my over know water "
          "than call first who may down side been now find any new work part take get place made live where "
          "after back little only round man year came show every good me give our under name very through "
          "just form sentence great think say help low line differ turn cause much mean before move right "
          "boy old too same tell does set three want air well also play small end put home read hand port "
          "large spell add even land here must big high such follow act why ask men change went light kind "
          "off need house picture try us again animal point mother world near build self earth father model "
          "service ray serve token stream train cluster key limit quota").split()


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- inputs ----------------------------------------------------------------------------------------------
def resolve_model(arg: str | None) -> Path:
    """--model, else a built tiny-chat of the platform ($MAAS_HOME/models) or of the test cache, else build
    one with the project's own builder (serve_apps.tiny_chat.build, what `maas models build` runs)."""
    from serve_apps import tiny_chat

    if arg:
        path = Path(arg).expanduser().resolve()
        if not (path / "config.json").is_file():
            sys.exit(f"--model {path}: not a Hugging Face model directory")
        return path
    home = Path(os.environ.get("MAAS_HOME", Path.home() / ".maas")).expanduser()
    cache = Path(os.environ.get("MAAS_TEST_CACHE", Path.home() / ".cache" / "maas-tests"))
    for candidate in (home / "models" / "tiny-chat", cache / "models" / "tiny-chat"):
        if tiny_chat.is_built(candidate):
            return candidate.resolve()
    target = Path.home() / ".cache" / "maas-bench" / "tiny-chat"
    if not tiny_chat.is_built(target):
        log(f"no built tiny-chat found; building one into {target} (a few minutes) ...")
        tiny_chat.build(target)
    return target


def write_dataset(path: Path, count: int, seed: int) -> None:
    """Alpaca rows of generated text: an instruction of 8-40 words, an answer of 20-80 (~70-140 tokens)."""
    rng = random.Random(seed)

    def text(lo: int, hi: int) -> str:
        return " ".join(rng.choice(_WORDS) for _ in range(rng.randint(lo, hi))) + " ."

    path.write_text("".join(json.dumps({"instruction": text(8, 40), "output": text(20, 80)}) + "\n"
                            for _ in range(count)))


# -- measurement ------------------------------------------------------------------------------------------
@dataclass
class Row:
    recipe: str
    side: str  # "plain" or "platform"
    workers: int
    threads: int  # torch threads per training process
    steps: list[dict] = field(default_factory=list)  # {"step", "end_s", "tokens", "in_step_s", "loss"}
    job_wall_s: float | None = None
    note: str = ""
    other_cores: float | None = None  # CPU used by processes outside this benchmark while the row ran

    def steady(self, warmup: int) -> dict:
        if len(self.steps) <= warmup:
            raise ValueError(f"{self.side} {self.recipe}: {len(self.steps)} steps recorded, need > {warmup}")
        measured = self.steps[warmup:]
        wall = measured[-1]["end_s"] - self.steps[warmup - 1]["end_s"] if warmup else measured[-1]["end_s"]
        tokens = sum(s["tokens"] for s in measured)
        in_step = sum(s["in_step_s"] for s in measured)
        return {"steps": len(measured), "tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall,
                "step_ms": 1000 * wall / len(measured), "in_step_ms": 1000 * in_step / len(measured),
                "final_loss": self.steps[-1]["loss"]}


def job_config(recipe: str, workers: int, cpus: int | None, args, model: Path, dataset: Path, out: Path):
    from train_jobs.config import FinetuneConfig

    return FinetuneConfig(
        name=f"bench-{recipe}-{workers}w", job_type=recipe, base_model_path=model, dataset_path=dataset,
        output_dir=out, global_batch_size=args.batch_size, learning_rate=args.learning_rate,
        lr_scheduler="cosine", max_seq_len=args.max_seq_len, num_workers=workers, max_failures=1,
        checkpoints_to_keep=args.checkpoints, seed=args.seed,
        resources_per_worker={"CPU": cpus} if cpus else None)


def plain_loop(recipe: str, config, encoded: list, total_steps: int, threads: int) -> Row:
    """The reference: what one would write by hand with transformers and PEFT, in one process."""
    import torch
    from peft import LoraConfig, get_peft_model
    from torch.nn.utils.rnn import pad_sequence
    from transformers import AutoModelForCausalLM, AutoTokenizer, get_cosine_schedule_with_warmup

    from train_jobs.schedule import step_samples

    torch.set_num_threads(threads)
    torch.manual_seed(config.seed)
    tokenizer = AutoTokenizer.from_pretrained(config.base_model_path)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model = AutoModelForCausalLM.from_pretrained(config.base_model_path, dtype=torch.float32)
    if recipe == "lora":
        lora = config.lora
        model = get_peft_model(model, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                                 target_modules=lora.target_modules, task_type="CAUSAL_LM"))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, 0, total_steps)
    samples = [(torch.tensor(e.input_ids), torch.tensor(e.labels)) for e in encoded]
    row = Row(recipe, "plain", 1, threads)
    model.train()
    start = time.perf_counter()
    for step in range(total_steps):
        step_start = time.perf_counter()
        batch = [samples[i] for i in step_samples(step, len(samples), config.epochs, config.global_batch_size,
                                                  config.seed)]
        ids = pad_sequence([b[0] for b in batch], batch_first=True, padding_value=pad_id)
        labels = pad_sequence([b[1] for b in batch], batch_first=True, padding_value=-100)
        mask = pad_sequence([torch.ones_like(b[0]) for b in batch], batch_first=True, padding_value=0)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        value = loss.item()
        end = time.perf_counter()
        row.steps.append({"step": step + 1, "end_s": end - start, "tokens": sum(len(b[0]) for b in batch),
                          "in_step_s": end - step_start, "loss": value})
    row.job_wall_s = time.perf_counter() - start
    return row


def _worker_threads(ray_dir: Path, since: float) -> int | None:
    """The torch thread count rank 0 logged ("torch threads of rank 0: N") in this job's worker logs."""
    found = None
    for path in sorted(ray_dir.glob("session_*/logs/*worker*"), key=lambda p: p.stat().st_mtime):
        if path.stat().st_mtime < since:
            continue
        for match in re.finditer(r"torch threads of rank 0: (\d+)", path.read_text(errors="replace")):
            found = int(match.group(1))
    return found


def platform_job(recipe: str, workers: int, cpus: int | None, args, model: Path, dataset: Path, work: Path,
                 ray_dir: Path) -> Row:
    """One tuning job through the real entrypoint; its steps come from the job's own metrics.jsonl."""
    from train_jobs import finetune
    from train_jobs.progress import read_metrics, read_status

    out = work / f"platform-{recipe}-{workers}w"
    config = job_config(recipe, workers, cpus, args, model, dataset, out)
    since, start = time.time(), time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # the job's own progress lines; stdout keeps the table
        code = finetune.run(config)
    wall = time.perf_counter() - start
    if code != 0:
        sys.exit(f"platform {recipe} job with {workers} worker(s) failed (exit {code}): "
                 f"{read_status(out).get('error')}; see {out}")
    threads = _worker_threads(ray_dir, since - 1)
    row = Row(recipe, "platform", workers, threads or 0, job_wall_s=wall,
              note=f"resources_per_worker CPU {cpus}" if cpus else "")
    for m in read_metrics(out):
        row.steps.append({"step": m["step"], "end_s": m["elapsed_s"], "tokens": m["tokens"],
                          "in_step_s": m["step_time_s"], "loss": m["loss"]})
    return row


# -- output ------------------------------------------------------------------------------------------------
def _combined(rows: list[Row], warmup: int) -> dict:
    parts = [r.steady(warmup) for r in rows]
    steps, wall = sum(p["steps"] for p in parts), sum(p["wall_s"] for p in parts)
    return {"tokens_per_s": sum(p["tokens"] for p in parts) / wall, "step_ms": 1000 * wall / steps,
            "in_step_ms": sum(p["in_step_ms"] * p["steps"] for p in parts) / steps,
            "final_loss": parts[0]["final_loss"], "job_wall_s": sum(r.job_wall_s for r in rows) / len(rows),
            "runs": [p["tokens_per_s"] for p in parts],
            "other_cores": None if any(r.other_cores is None for r in rows) else
            sum(r.other_cores * r.job_wall_s for r in rows) / sum(r.job_wall_s for r in rows)}


def table(rows: list[Row], recipes: list[str], warmup: int) -> str:
    lines = ["| recipe | loop | workers | torch threads/worker | tokens/s | % of plain loop | step time ms "
             "(in-step ms) | final loss | job wall s | other CPU load (cores) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for recipe in recipes:
        plain_rows = [r for r in rows if r.recipe == recipe and r.side == "plain"]
        plain = _combined(plain_rows, warmup) if plain_rows else None
        shown = ([(plain_rows[0], plain)] if plain else []) + [
            (r, _combined([r], warmup)) for r in sorted(rows, key=lambda r: (r.workers, r.note))
            if r.recipe == recipe and r.side == "platform"]
        for r, s in shown:
            share = f"{100 * s['tokens_per_s'] / plain['tokens_per_s']:.1f}%" if plain else "n/a"
            if r.side == "plain":
                loop = "plain PyTorch"
                if len(s["runs"]) > 1:
                    loop += " (runs before/after: " + " / ".join(f"{x:,.0f}" for x in s["runs"]) + ")"
            else:
                loop = "platform (Ray Train)" + (f" [{r.note}]" if r.note else "")
            lines.append(f"| {recipe} | {loop} | {r.workers} | {r.threads or '?'} | {s['tokens_per_s']:,.0f} | {share} | "
                         f"{s['step_ms']:.1f} ({s['in_step_ms']:.1f}) | {s['final_loss']:.3f} | "
                         f"{s['job_wall_s']:.1f} | "
                         f"{'' if s['other_cores'] is None else format(s['other_cores'], '.2f')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="tiny-chat directory (default: a built one, or build it)")
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps per row (default 60)")
    parser.add_argument("--warmup", type=int, default=5, help="first steps left out of the figures (default 5)")
    parser.add_argument("--batch-size", type=int, default=32, help="global batch size in samples (default 32)")
    parser.add_argument("--max-seq-len", type=int, default=1024)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--checkpoints", type=int, default=1,
                        help="checkpoints_to_keep of the platform jobs (default 1, the product default: only "
                             "the last step checkpoints; more spreads checkpoints into the measured steps)")
    parser.add_argument("--recipes", default="lora,full", help="comma-separated: lora,full")
    parser.add_argument("--workers", default="1,2", help="comma-separated platform worker counts")
    parser.add_argument("--cpus", type=int, default=os.cpu_count(),
                        help="cores to use: Ray's num_cpus and the thread budget (default: all)")
    parser.add_argument("--explicit-cpus", action="store_true",
                        help="platform jobs ask for resources_per_worker={'CPU': cpus // workers} (default: "
                             "none, as the control plane submits them)")
    parser.add_argument("--plain-runs", type=int, choices=(1, 2), default=2,
                        help="plain loop runs per recipe: 2 = before and after the platform jobs (default)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--json", type=Path, help="also write the raw per-step figures here")
    parser.add_argument("--verbose", action="store_true", help="show the workers' logs")
    args = parser.parse_args(argv)
    if not 0 <= args.warmup < args.steps:
        parser.error("--warmup must be below --steps")
    recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    worker_counts = [int(w) for w in args.workers.split(",") if w.strip()]

    model = resolve_model(args.model)
    work = Path(tempfile.mkdtemp(prefix="maas-ft-bench-"))
    log(f"model {model}; work dir {work}; load average {os.getloadavg()}")
    dataset = work / "train.jsonl"
    write_dataset(dataset, args.steps * args.batch_size, args.seed)  # one epoch = --steps steps

    import ray

    from train_jobs import finetune

    rows: list[Row] = []
    other = OtherLoad()
    ray_dir: Path | None = None
    load_before = [round(x, 2) for x in os.getloadavg()]
    try:
        # A private local cluster: address="local" never joins RAY_ADDRESS or a `ray start` cluster. It is
        # started before the plain loops too, so that both sides share the same idle Ray daemons.
        os.environ.pop("RAY_ADDRESS", None)
        os.environ.pop("OMP_NUM_THREADS", None)  # Ray sets it per worker from the worker's CPUs
        ray_dir = Path(tempfile.mkdtemp(prefix="ray-ftb-"))
        ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=args.verbose,
                 _temp_dir=str(ray_dir))
        for recipe in recipes:
            # the samples the platform trains on, encoded by its own validation path (finetune.prepare)
            config, encoded, total_steps, _ = finetune.prepare(
                finetune._absolute(job_config(recipe, 1, None, args, model, dataset, work / "plain")))
            tokens = sum(len(e.input_ids) for e in encoded)
            log(f"{recipe}: {len(encoded)} samples, {tokens} tokens, {total_steps} steps")
            runs = [(w, max(1, args.cpus // w) if args.explicit_cpus else None) for w in worker_counts]
            # The plain loop runs before and after the platform jobs (its figure is over both runs), so a
            # drift in the machine's load does not favour one side.
            for index in range(len(runs) + 2):
                other.start()
                if index in (0, len(runs) + 1) and args.plain_runs > (index > 0):
                    log(f"plain {recipe}: 1 process, {args.cpus} torch threads ...")
                    rows.append(plain_loop(recipe, config, encoded, total_steps, args.cpus))
                elif 0 < index <= len(runs):
                    workers, cpus = runs[index - 1]
                    log(f"platform {recipe}: {workers} worker(s)"
                        + (f", resources_per_worker CPU {cpus}" if cpus else "") + " ...")
                    rows.append(platform_job(recipe, workers, cpus, args, model, dataset, work, ray_dir))
                else:
                    continue
                rows[-1].other_cores = other.stop()
                log(f"  {rows[-1].steady(args.warmup)['tokens_per_s']:,.0f} tokens/s, {rows[-1].threads or '?'} "
                    f"torch thread(s) per process, job wall {rows[-1].job_wall_s:.1f} s, other processes' CPU "
                    f"{rows[-1].other_cores or 0:.2f} cores")
    finally:
        if ray.is_initialized():
            ray.shutdown()  # only the cluster this script started
        if ray_dir is not None:
            shutil.rmtree(ray_dir, ignore_errors=True)

    info = machine() | {"load_average_before": load_before}
    print(f"\nFine-tuning throughput on tiny-chat ({model}): global batch {args.batch_size}, {args.steps} steps "
          f"per row, steady state = steps {args.warmup + 1}..{args.steps} (start-up and first {args.warmup} "
          f"steps excluded); {info['cpu_count']} cores; load average before {load_before}, "
          f"after {info['load_average']}\n")
    print(table(rows, recipes, args.warmup))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "machine": info,
                                         "rows": [asdict(r) | {"steady": r.steady(args.warmup)} for r in rows]},
                                        indent=1))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
