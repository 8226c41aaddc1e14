"""Everything needed to continue a run exactly, next to the recipe's weights in one checkpoint directory.

    checkpoint_000040/
      model/ or adapter/        weights (Hugging Face / PEFT format, usable as they are)   rank 0
      optimizer.pt scheduler.pt                                                              rank 0
      deepspeed/                engine state instead of the two above under ZeRO              every rank its shard
      rng_rank<r>.pt            python, numpy, torch (and accelerator) RNG states            every rank
      train_state.json          step, epoch, index in epoch, elapsed time, world size        rank 0
      files_rank<r>.json        every file the rank wrote, with its size (written last)     every rank

Every rank writes its files into its own directory and reports it; Ray Train merges them into one. A
checkpoint is complete when every rank's file list is there and every file in it has its full size: a copy
cut off half-way (a killed run, a full disk) is never taken for a checkpoint to resume from.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch

TRAIN_STATE = "train_state.json"
DEEPSPEED_DIR = "deepspeed"
DEEPSPEED_TAG = "state"


def checkpoint_name(step: int) -> str:
    return f"checkpoint_{step:06d}"


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save(directory: Path, *, rank: int, train_state: dict, optimizer=None, scheduler=None) -> None:
    """This rank's share of the resumable state (the recipe writes the weights), then its file list."""
    torch.save(rng_state(), directory / f"rng_rank{rank}.pt")
    if rank == 0:
        if optimizer is not None:
            torch.save(optimizer.state_dict(), directory / "optimizer.pt")
            torch.save(scheduler.state_dict(), directory / "scheduler.pt")
        (directory / TRAIN_STATE).write_text(json.dumps(train_state | {"file_lists": True}))
    files = {str(path.relative_to(directory)): path.stat().st_size for path in sorted(directory.rglob("*"))
             if path.is_file() and not path.name.startswith("files_rank")}
    (directory / f"files_rank{rank}.json").write_text(json.dumps(files))


def load(directory: Path, *, rank: int, optimizer=None, scheduler=None) -> dict:
    """Restore optimizer and scheduler (when given) and return the train state. RNG states are restored
    separately, last, so that building the model does not consume them."""
    if optimizer is not None:
        optimizer.load_state_dict(torch.load(directory / "optimizer.pt", weights_only=False))
        scheduler.load_state_dict(torch.load(directory / "scheduler.pt", weights_only=False))
    return json.loads((directory / TRAIN_STATE).read_text())


def restore_rng(directory: Path, rank: int) -> None:
    path = directory / f"rng_rank{rank}.pt"
    if not path.exists():  # continued with more workers than were saved: a new rank starts from rank 0's
        path = directory / "rng_rank0.pt"
    set_rng_state(torch.load(path, weights_only=False))


def is_complete(directory: Path, weights_dir: str) -> bool:
    try:
        state = json.loads((directory / TRAIN_STATE).read_text())
        if state.get("file_lists"):
            for rank in range(state["world_size"]):
                files = json.loads((directory / f"files_rank{rank}.json").read_text())
                if any((directory / name).stat().st_size != size for name, size in files.items()):
                    return False
            return True
    except (OSError, ValueError, KeyError):
        return False
    # Checkpoints written before file lists existed: the files are there, sizes unknown.
    has_weights = (directory / weights_dir).is_dir() or (directory / DEEPSPEED_DIR).is_dir()
    return has_weights and all((directory / f"rng_rank{r}.pt").exists() for r in range(state["world_size"]))


def step_of(directory: Path) -> int:
    return json.loads((Path(directory) / TRAIN_STATE).read_text())["step"]


def latest(run_dir: Path, weights_dir: str) -> Path | None:
    """The complete checkpoint with the highest step under a run directory, if any."""
    found = [d for d in Path(run_dir).glob("checkpoint_*") if is_complete(d, weights_dir)]
    return max(found, key=step_of) if found else None
