"""The per-worker training loop run by Ray Train's TorchTrainer, shared by every recipe.

One step = one global batch. Each worker computes the summed token loss of its shard and divides by the
token count of the whole global batch (times the world size, which DDP/DeepSpeed averaging undoes), so the
update is the same whatever the worker count or micro-batching.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
import torch.nn.functional as F

from train_jobs import checkpointing
from train_jobs.config import FinetuneConfig
from train_jobs.encoding import IGNORE_INDEX
from train_jobs.progress import MetricsLog, read_status, update_status
from train_jobs.recipes import load_tokenizer, recipe_for
from train_jobs.schedule import position, shard, step_samples


def lr_factor(config: FinetuneConfig, total_steps: int):
    warmup = int(total_steps * config.warmup_ratio)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        if config.lr_scheduler == "linear":
            return 1.0 - progress
        if config.lr_scheduler == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    return factor


def _device(config: FinetuneConfig) -> torch.device:
    if config.uses_npu:
        import torch_npu  # noqa: F401  (registers the "npu" device)

        return torch.device("npu", ray.train.get_context().get_local_rank())
    if config.use_gpu:
        return ray.train.torch.get_device()
    return torch.device("cpu")


def cpu_threads(config: FinetuneConfig, local_workers: int) -> int:
    """Torch threads of one CPU worker: its share of the node's cores, or fewer if the job asked for fewer CPUs.

    Left alone, a worker runs OMP_NUM_THREADS threads, which Ray sets to the worker's *logical* CPUs: 1 by
    default (the control plane sets no resources_per_worker), so a 1-worker job used one core of the node
    (56-61% of a plain PyTorch loop on 2 cores, benchmarks/finetune_throughput.py); and the platform declares
    16 logical CPUs on any head (cluster/platform.py), so a CPU request says nothing about the cores."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    share = max(1, cores // max(1, local_workers))
    requested = (config.resources_per_worker or {}).get("CPU")
    return min(share, max(1, int(requested))) if requested else share


def _seed(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextmanager
def _resume_dir(resume_from: str | None):
    """The checkpoint to start from: the newer of Ray's (after an automatic restart) and the one the driver
    found in output_dir. Continuing a stopped job, Ray restores its own record of the run, which can lag the
    files by a checkpoint or two (its controller takes reports in one at a time)."""
    checkpoint = ray.train.get_checkpoint()
    with checkpoint.as_directory() if checkpoint is not None else nullcontext(None) as ray_dir:
        found = [Path(d) for d in (ray_dir, resume_from) if d]
        yield max(found, key=checkpointing.step_of) if found else None


def _collate(samples: list[tuple[list[int], list[int]]], pad_id: int, device):
    width = max(len(ids) for ids, _ in samples)
    ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(samples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(samples), width), dtype=torch.long)
    for row, (seq, lab) in enumerate(samples):
        ids[row, : len(seq)] = torch.tensor(seq)
        labels[row, : len(lab)] = torch.tensor(lab)
        mask[row, : len(seq)] = 1
    return ids.to(device), labels.to(device), mask.to(device)


def _summed_token_loss(model, ids, labels, mask) -> torch.Tensor:
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction="sum")


def _all_reduce(tensor: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor)
    return tensor


def _deepspeed_engine(config: FinetuneConfig, model, optimizer, scheduler, per_worker: int, micro: int, device):
    # DeepSpeed guesses its accelerator from what is installed; the job's device decides (cpu, cuda or npu).
    os.environ["DS_ACCELERATOR"] = device.type
    import deepspeed

    ds_config = {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": per_worker // micro,
        "train_batch_size": config.global_batch_size,
        "zero_optimization": {"stage": config.deepspeed},
        "gradient_clipping": config.max_grad_norm or 0.0,
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 1 << 30,
    }
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=ds_config, dist_init_required=False)
    return engine


def train_loop_per_worker(loop_config: dict) -> None:
    config = FinetuneConfig.model_validate(loop_config["config"])
    total_steps: int = loop_config["total_steps"]
    data: list[tuple[list[int], list[int]]] = ray.get(loop_config["data"])
    n = len(data)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = _device(config)
    if device.type == "cpu":
        torch.set_num_threads(cpu_threads(config, context.get_local_world_size()))
    use_ds = config.deepspeed is not None
    per_worker = config.global_batch_size // world
    micro = config.micro_batch_size or per_worker
    micro_steps = math.ceil(per_worker / micro)
    _seed(config.seed)

    recipe = recipe_for(config)
    tokenizer = load_tokenizer(config)
    with _resume_dir(loop_config.get("resume_from")) as ckpt_dir:
        model = recipe.build_model(config, ckpt_dir)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(config, total_steps))
        if use_ds:
            model = engine = _deepspeed_engine(config, model.to(device), optimizer, scheduler, per_worker, micro,
                                                device)
            unwrapped = engine.module
        else:
            model = ray.train.torch.prepare_model(model, move_to_device=device)
            unwrapped = getattr(model, "module", model)
        start_step, elapsed_before = 0, 0.0
        if ckpt_dir is not None:
            if use_ds:
                engine.load_checkpoint(str(ckpt_dir / checkpointing.DEEPSPEED_DIR), tag=checkpointing.DEEPSPEED_TAG)
            state = checkpointing.load(ckpt_dir, rank=rank, optimizer=None if use_ds else optimizer,
                                       scheduler=None if use_ds else scheduler)
            start_step, elapsed_before = state["step"], state["elapsed_s"]
            checkpointing.restore_rng(ckpt_dir, rank)  # last: building the model consumes random numbers

    log = MetricsLog(config.output_dir)
    if rank == 0:
        log.truncate_after(start_step)
        if start_step:
            resumes = read_status(config.output_dir).get("resumes", []) + [{"step": start_step, "at": time.time()}]
            update_status(config.output_dir, resumed_from_step=start_step, resumes=resumes)
            print(f"resumed from the checkpoint of step {start_step}", flush=True)
        print(f"{world} worker(s); torch threads of rank 0: {torch.get_num_threads()}", flush=True)

    interval = config.checkpoint_interval(total_steps)
    dummy = ([tokenizer.pad_token_id], [IGNORE_INDEX])  # keeps every rank's backward count equal
    session_start = time.perf_counter()
    model.train()
    for step in range(start_step, total_steps):
        step_start = time.perf_counter()
        learning_rate = optimizer.param_groups[0]["lr"]
        indices = shard(step_samples(step, n, config.epochs, config.global_batch_size, config.seed), rank, world)
        mine = [data[i] for i in indices]
        counts = torch.tensor([sum(sum(1 for t in lab if t != IGNORE_INDEX) for _, lab in mine),
                               sum(len(ids) for ids, _ in mine)], dtype=torch.float64)
        trained_tokens, input_tokens = _all_reduce(counts).tolist()
        loss_sum = torch.zeros((), dtype=torch.float64)
        for i in range(micro_steps):
            chunk = mine[i * micro:(i + 1) * micro]
            ids, labels, mask = _collate(chunk or [dummy], tokenizer.pad_token_id, device)
            last = i == micro_steps - 1
            sync = nullcontext() if (last or use_ds or not hasattr(model, "no_sync")) else model.no_sync()
            with sync:
                summed = _summed_token_loss(model, ids, labels, mask)
                scaled = summed * (world / max(trained_tokens, 1.0))
                if use_ds:
                    engine.set_gradient_accumulation_boundary(last)
                    engine.backward(scaled, scale_wrt_gas=False)
                    engine.step()
                else:
                    scaled.backward()
            loss_sum += summed.detach().double().cpu()
        if not use_ds:
            if config.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        loss = _all_reduce(loss_sum).item() / max(trained_tokens, 1.0)

        done = step + 1
        step_time = time.perf_counter() - step_start
        session = time.perf_counter() - session_start
        elapsed = elapsed_before + session
        if rank == 0:
            eta = session / (done - start_step) * (total_steps - done)
            record = {"step": done, "total_steps": total_steps, "percent": round(100.0 * done / total_steps, 2),
                      "elapsed_s": round(elapsed, 3), "eta_s": round(eta, 3), "loss": loss,
                      "learning_rate": learning_rate, "tokens": int(input_tokens),
                      "trained_tokens": int(trained_tokens), "tokens_per_s": round(input_tokens / step_time, 1),
                      "step_time_s": round(step_time, 4),
                      "epoch": round(min(config.epochs, done * config.global_batch_size / n), 4)}
            log.append(record)
            update_status(config.output_dir, step=done, total_steps=total_steps, percent=record["percent"],
                          elapsed_s=record["elapsed_s"], eta_s=record["eta_s"], loss=loss)
            print(f"step {done}/{total_steps} loss {loss:.4f} lr {learning_rate:.3g} "
                  f"{record['tokens_per_s']:.0f} tokens/s", flush=True)
        if done % interval == 0 or done == total_steps:
            epoch, index = position(done, n, config.global_batch_size)
            state = {"step": done, "epoch": epoch, "index_in_epoch": index, "elapsed_s": elapsed,
                     "total_steps": total_steps, "world_size": world, "loss": loss}
            _save_checkpoint(config, recipe, unwrapped, tokenizer, engine if use_ds else None, optimizer, scheduler,
                             rank, state)


def _save_checkpoint(config, recipe, unwrapped, tokenizer, engine, optimizer, scheduler, rank, state) -> None:
    with tempfile.TemporaryDirectory(prefix="maas-ckpt-") as tmp:
        directory = Path(tmp)
        if engine is not None:
            engine.save_checkpoint(str(directory / checkpointing.DEEPSPEED_DIR), tag=checkpointing.DEEPSPEED_TAG)
            gather = nullcontext()
            if config.deepspeed == 3:
                import deepspeed

                gather = deepspeed.zero.GatheredParameters(list(unwrapped.parameters()), modifier_rank=None)
            with gather:
                if rank == 0:
                    recipe.save_weights(unwrapped, tokenizer, directory)
            checkpointing.save(directory, rank=rank, train_state=state)
        else:
            if rank == 0:
                recipe.save_weights(unwrapped, tokenizer, directory)
            checkpointing.save(directory, rank=rank, train_state=state, optimizer=optimizer, scheduler=scheduler)
        ray.train.report({"step": state["step"], "loss": state["loss"]},
                         checkpoint=ray.train.Checkpoint.from_directory(directory),
                         checkpoint_dir_name=checkpointing.checkpoint_name(state["step"]))
