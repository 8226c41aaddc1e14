"""Entrypoint of a tuning job: `python -m train_jobs.finetune --config job.yaml` (plain or under `ray job submit`).

Phases (status.json `phase`): validating -> running -> completed | failed | stopped. The dataset and the
iteration rules are checked first, before Ray or any training compute is touched; a bad dataset ends the
job with the list of row errors in status.json and a non-zero exit status.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import traceback
from pathlib import Path

from pydantic import ValidationError

from train_jobs import checkpointing
from train_jobs.config import FinetuneConfig
from train_jobs.datasets import DatasetInvalid, DatasetLimits, RowError, read_dataset
from train_jobs.encoding import encode_samples
from train_jobs.progress import Phase, plot_loss, update_status
from train_jobs.recipes import load_tokenizer, recipe_for

EXIT_INVALID = 2
EXIT_FAILED = 1


class JobInvalid(Exception):
    """The job cannot start; `errors` says why, row by row for a dataset."""

    def __init__(self, errors: list[RowError]):
        self.errors = errors
        super().__init__("\n".join(f"line {e.line}, {e.field}: {e.reason}" if e.line else f"{e.field}: {e.reason}"
                                   for e in errors))


def _absolute(config: FinetuneConfig) -> FinetuneConfig:
    """Workers run in other directories (and maybe on other nodes): every path must be absolute."""
    return config.model_copy(update={name: getattr(config, name).expanduser().resolve()
                                     for name in ("base_model_path", "dataset_path", "output_dir")})


def prepare(config: FinetuneConfig) -> tuple[FinetuneConfig, list, int, Path | None]:
    """Validate everything that can be checked before training: the model, the dataset, the iteration and
    checkpoint rules, and whether output_dir may be used. Returns (config with data_count, encoded samples,
    total steps, checkpoint to continue from)."""
    if not (config.base_model_path / "config.json").is_file():
        raise JobInvalid([RowError(line=0, field="base_model_path",
                                   reason=f"not a Hugging Face model directory: {config.base_model_path}")])
    try:
        samples = read_dataset(config.dataset_path, config.dataset_format.value, kind=config.dataset_kind,
                               limits=DatasetLimits(max_rows=config.dataset_max_rows))
    except DatasetInvalid as invalid:
        raise JobInvalid(invalid.errors) from None
    except FileNotFoundError as missing:
        raise JobInvalid([RowError(line=0, field="dataset_path", reason=str(missing))]) from None
    try:
        config = config.with_data_count(len(samples))
    except ValidationError as error:
        raise JobInvalid([RowError(line=0, field=".".join(map(str, e["loc"])) or "config", reason=e["msg"])
                          for e in error.errors(include_url=False)]) from None
    tokenizer = load_tokenizer(config)
    try:
        encoded = encode_samples(tokenizer, samples, config.dataset_kind, config.max_seq_len,
                                 config.chat_template_kwargs)
    except ValueError as error:
        raise JobInvalid([RowError(line=0, field="base_model_path", reason=str(error))]) from None
    untrained = [i + 1 for i, e in enumerate(encoded) if not e.trained_tokens]
    if untrained:
        raise JobInvalid([RowError(line=0, field="max_seq_len",
                                   reason=f"sample {i} has no trained token within max_seq_len "
                                          f"{config.max_seq_len}") for i in untrained[:20]])
    resume_from = checkpointing.latest(config.run_dir, recipe_for(config).weights_dir)
    if resume_from and not config.resume:
        raise JobInvalid([RowError(line=0, field="output_dir", reason=(
            f"{config.output_dir} already holds checkpoints of job {config.name!r} "
            f"(latest: {resume_from.name}); set resume: true to continue it or use another output_dir"))])
    return config, encoded, config.iterations(len(samples)), resume_from


def _checkpoint_list(config: FinetuneConfig) -> list[dict]:
    weights = recipe_for(config).weights_dir
    return [{"name": d.name, "path": str(d), "step": int(d.name.split("_")[-1])}
            for d in sorted(config.run_dir.glob("checkpoint_*")) if checkpointing.is_complete(d, weights)]


def _on_stop(output_dir: Path):
    def handler(signum, _frame):
        update_status(output_dir, phase=Phase.STOPPED, stopped_at=time.time())
        print(f"stopped by signal {signum}; continue with resume: true", flush=True)
        os._exit(128 + signum)  # the Ray driver's shutdown could outlast `ray job stop`'s grace period

    return handler


def train(config: FinetuneConfig, encoded: list, total_steps: int, resume_from: Path | None):
    """Run the Ray Train job and return its Result."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from train_jobs.train_loop import train_loop_per_worker

    ray.init(ignore_reinit_error=True, log_to_driver=True)
    # Again: ray.init installs its own SIGTERM handler, which ends the job without saying "stopped".
    signal.signal(signal.SIGTERM, _on_stop(config.output_dir))
    data = ray.put([(e.input_ids, e.labels) for e in encoded])
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": config.model_dump(mode="json"), "total_steps": total_steps, "data": data,
                           "resume_from": str(resume_from) if resume_from else None},
        torch_config=TorchConfig(backend=config.collective_backend.value),
        scaling_config=ScalingConfig(num_workers=config.num_workers, use_gpu=config.use_gpu,
                                     resources_per_worker=config.worker_resources,
                                     placement_strategy="SPREAD" if config.spread_workers else "PACK"),
        run_config=RunConfig(
            name=config.name, storage_path=str(config.output_dir),
            failure_config=FailureConfig(max_failures=config.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=config.checkpoints_to_keep)),
    )
    return trainer.fit()


def run(config: FinetuneConfig) -> int:
    """Validate, train, export. Returns the process exit status; status.json tells the details."""
    config = _absolute(config)
    out = config.output_dir
    out.mkdir(parents=True, exist_ok=True)
    update_status(out, phase=Phase.VALIDATING, name=config.name, job_type=config.job_type.value,
                  started_at=time.time(), error=None, report=None)
    try:
        config, encoded, total_steps, resume_from = prepare(config)
    except JobInvalid as invalid:
        print(f"job {config.name} is invalid:\n{invalid}", flush=True)
        update_status(out, phase=Phase.FAILED, error="validation failed",
                      report=[e.model_dump() for e in invalid.errors])
        return EXIT_INVALID
    signal.signal(signal.SIGTERM, _on_stop(out))
    update_status(out, phase=Phase.RUNNING, data_count=config.data_count, total_steps=total_steps,
                  step=int(resume_from.name.split("_")[-1]) if resume_from else 0)
    print(f"job {config.name}: {config.job_type.value}, {config.data_count} samples, {total_steps} steps, "
          f"{config.num_workers} worker(s)" + (f", continuing from {resume_from.name}" if resume_from else ""),
          flush=True)
    try:
        result = train(config, encoded, total_steps, resume_from)
        with result.checkpoint.as_directory() as final:
            outputs = recipe_for(config).export(config, Path(final))
    except Exception as error:  # noqa: BLE001  (any failure ends the job; status.json says which)
        traceback.print_exc()
        plot_loss(out)
        update_status(out, phase=Phase.FAILED, error=f"{type(error).__name__}: {error}"[:4000],
                      checkpoints=_checkpoint_list(config))
        return EXIT_FAILED
    chart = plot_loss(out)
    outputs |= {"metrics": str(out / "metrics.jsonl"), "loss_chart": str(chart) if chart else None}
    update_status(out, phase=Phase.COMPLETED, finished_at=time.time(), outputs=outputs,
                  checkpoints=_checkpoint_list(config))
    print(f"job {config.name} completed: {outputs}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train_jobs.finetune", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, type=Path, help="the job's FinetuneConfig as YAML")
    args = parser.parse_args(argv)
    try:
        config = FinetuneConfig.from_yaml(args.config)
    except ValidationError as error:
        print(f"invalid job configuration {args.config}:\n{error}", file=sys.stderr)
        return EXIT_INVALID
    return run(config)


if __name__ == "__main__":
    sys.exit(main())
