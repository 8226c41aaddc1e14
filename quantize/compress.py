"""Entrypoint of a compression job: `python -m quantize.compress --config job.yaml`, run by the compression
environment's python (`.venv-compress`, where llmcompressor lives), plain or under `ray job submit`.

Phases (status.json `phase`, as a tuning job's): validating -> running -> completed | failed | stopped. The
model and the calibration data are checked first, before any compute; then llmcompressor's `oneshot` applies
the strategy's recipe (quantize/recipes.py) layer by layer, and the result is saved in compressed-tensors
format under `<output_dir>/model`, which vLLM loads with no `quantization=` argument.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path

from pydantic import ValidationError

from quantize.config import CompressConfig, compressibility
from train_jobs.progress import Phase, update_status

EXIT_INVALID = 2
EXIT_FAILED = 1
BUILTIN_CALIBRATION = Path(__file__).parent / "data" / "calibration.jsonl"


class JobInvalid(Exception):
    pass


def calibration_texts(config: CompressConfig, tokenizer) -> list[str]:
    """The calibration samples as the served model sees them (its chat template, default template kwargs)."""
    from train_jobs.datasets import DatasetInvalid, DatasetLimits, read_dataset

    path = config.dataset_path or BUILTIN_CALIBRATION
    fmt = config.dataset_format if config.dataset_path else "alpaca"
    try:
        samples = read_dataset(path, fmt, kind="sft", limits=DatasetLimits(max_rows=config.dataset_max_rows))
    except DatasetInvalid as invalid:
        raise JobInvalid(f"calibration dataset is invalid:\n{invalid}") from None
    except FileNotFoundError as missing:
        raise JobInvalid(f"calibration dataset not found: {missing}") from None
    texts = []
    for sample in samples:
        if sample.messages and tokenizer.chat_template:
            texts.append(tokenizer.apply_chat_template(sample.messages, tokenize=False,
                                                       **config.chat_template_kwargs))
        elif sample.messages:
            texts.append("\n".join(m.get("content") or "" for m in sample.messages))
        else:
            texts.append(sample.text or "")
    random.Random(config.seed).shuffle(texts)
    return [t for t in texts if t.strip()][:config.num_samples]


def prepare(config: CompressConfig) -> dict:
    """Check what can be checked before compute: the model directory and whether the strategy fits it."""
    config_file = config.base_model_path / "config.json"
    if not config_file.is_file():
        raise JobInvalid(f"not a Hugging Face model directory: {config.base_model_path}")
    model_config = json.loads(config_file.read_text())
    reason = compressibility(model_config, config.strategy)
    if reason:
        raise JobInvalid(reason)
    if config.model_dir.exists():
        raise JobInvalid(f"{config.model_dir} exists already; use another output_dir")
    return model_config


def _progress(out: Path, started: float):
    def report(done: int, total: int) -> None:
        elapsed = time.time() - started
        fraction = done / total if total else 0.0
        eta = elapsed / fraction * (1 - fraction) if fraction else None
        update_status(out, step=done, total_steps=total, percent=round(10 + 85 * fraction, 1),
                      elapsed_s=round(elapsed, 1), eta_s=round(eta, 1) if eta is not None else None)
        print(f"calibrating layer group {done + 1}/{total}", flush=True)

    return report


def _on_stop(output_dir: Path):
    def handler(signum, _frame):
        update_status(output_dir, phase=Phase.STOPPED, stopped_at=time.time())
        print(f"stopped by signal {signum}", flush=True)
        os._exit(128 + signum)

    return handler


def compress(config: CompressConfig) -> dict:
    """Run the recipe; returns what status.json's `outputs` records."""
    import torch
    from datasets import Dataset
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from quantize import llmc_compat
    from quantize.recipes import recipe

    torch.manual_seed(config.seed)
    started = time.time()
    tokenizer = AutoTokenizer.from_pretrained(config.base_model_path)
    texts = calibration_texts(config, tokenizer)
    if not texts:
        raise JobInvalid("the calibration dataset has no usable sample")
    encoded = tokenizer(texts, max_length=config.max_seq_len, truncation=True, padding=False,
                        add_special_tokens=False)
    dataset = Dataset.from_dict({"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]})
    model = AutoModelForCausalLM.from_pretrained(config.base_model_path, dtype="auto")
    llmc_compat.no_pinning_without_accelerator()
    llmc_compat.on_subgraph(_progress(config.output_dir, started))
    update_status(config.output_dir, percent=10.0, samples=len(texts))
    print(f"job {config.name}: {config.strategy.value} on {config.base_model_path.name}, {len(texts)} calibration "
          f"samples of at most {config.max_seq_len} tokens", flush=True)
    oneshot(model=model, dataset=dataset, recipe=recipe(config), max_seq_length=config.max_seq_len,
            num_calibration_samples=len(texts), pipeline="sequential", shuffle_calibration_samples=False)
    staging = config.output_dir / ".model.partial"
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging, save_compressed=True)
    tokenizer.save_pretrained(staging)
    for extra in ("generation_config.json", "chat_template.jinja"):  # kept as the original has them
        if (config.base_model_path / extra).is_file() and not (staging / extra).exists():
            shutil.copy2(config.base_model_path / extra, staging / extra)
    os.replace(staging, config.model_dir)
    size = sum(f.stat().st_size for f in config.model_dir.rglob("*") if f.is_file())
    return {"model": str(config.model_dir), "quantization": config.strategy.value, "bytes": size,
            "calibration_samples": len(texts), "seconds": round(time.time() - started, 1)}


def run(config: CompressConfig) -> int:
    config = config.model_copy(update={"base_model_path": config.base_model_path.expanduser().resolve(),
                                       "output_dir": config.output_dir.expanduser().resolve(),
                                       "dataset_path": config.dataset_path.expanduser().resolve()
                                       if config.dataset_path else None})
    out = config.output_dir
    out.mkdir(parents=True, exist_ok=True)
    update_status(out, phase=Phase.VALIDATING, name=config.name, strategy=config.strategy.value,
                  started_at=time.time(), error=None, percent=0.0)
    try:
        prepare(config)
    except JobInvalid as invalid:
        print(f"job {config.name} is invalid: {invalid}", flush=True)
        update_status(out, phase=Phase.FAILED, error=str(invalid)[:4000])
        return EXIT_INVALID
    signal.signal(signal.SIGTERM, _on_stop(out))
    update_status(out, phase=Phase.RUNNING, percent=5.0)
    try:
        outputs = compress(config)
    except JobInvalid as invalid:
        update_status(out, phase=Phase.FAILED, error=str(invalid)[:4000])
        return EXIT_INVALID
    except Exception as error:  # noqa: BLE001  (any failure ends the job; status.json says which)
        traceback.print_exc()
        update_status(out, phase=Phase.FAILED, error=f"{type(error).__name__}: {error}"[:4000])
        return EXIT_FAILED
    update_status(out, phase=Phase.COMPLETED, percent=100.0, eta_s=0, finished_at=time.time(), outputs=outputs)
    print(f"job {config.name} completed: {outputs}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m quantize.compress", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, type=Path, help="the job's CompressConfig as YAML")
    args = parser.parse_args(argv)
    try:
        config = CompressConfig.from_yaml(args.config)
    except (ValidationError, OSError) as error:
        print(f"invalid job configuration {args.config}:\n{error}", file=sys.stderr)
        return EXIT_INVALID
    return run(config)


if __name__ == "__main__":
    sys.exit(main())
