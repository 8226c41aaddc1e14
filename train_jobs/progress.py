"""What a running job tells the outside: status.json (phase, progress), metrics.jsonl (one line per step), loss.png.

Files are replaced atomically so the control plane never reads half a status.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from enum import Enum
from pathlib import Path

STATUS_FILE = "status.json"
METRICS_FILE = "metrics.jsonl"
LOSS_CHART = "loss.png"


class Phase(str, Enum):
    VALIDATING = "validating"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    STOPPED = "stopped"


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False))
    os.replace(tmp, path)


def read_status(output_dir: Path) -> dict:
    try:
        return json.loads((Path(output_dir) / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return {}


def update_status(output_dir: Path, **fields) -> dict:
    """Merge `fields` into status.json (phase, step, percent, eta_s, error, report, ...)."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    # Two processes write it (the driver: phases, a stop; rank 0: progress): without the lock, one's
    # read-merge-write could put back what the other had just replaced (a "stopped" turned "running" again).
    with open(output_dir / ".status.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        status = read_status(output_dir) | {k: (v.value if isinstance(v, Enum) else v) for k, v in fields.items()}
        status["updated_at"] = time.time()
        write_json_atomic(output_dir / STATUS_FILE, status)
    return status


def read_metrics(output_dir: Path) -> list[dict]:
    path = Path(output_dir) / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class MetricsLog:
    """metrics.jsonl, appended by rank 0. On resume, the lines of steps after the checkpoint are dropped:
    those steps run again, and the curve must hold each step once."""

    def __init__(self, output_dir: Path):
        self.path = Path(output_dir) / METRICS_FILE

    def truncate_after(self, step: int) -> None:
        kept = [m for m in read_metrics(self.path.parent) if m["step"] <= step]
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text("".join(json.dumps(m) + "\n" for m in kept))
        os.replace(tmp, self.path)

    def append(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()


def plot_loss(output_dir: Path) -> Path | None:
    """Draw the loss curve of metrics.jsonl into loss.png; None when there is no step yet."""
    metrics = read_metrics(output_dir)
    if not metrics:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot([m["step"] for m in metrics], [m["loss"] for m in metrics], linewidth=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(f"training loss ({len(metrics)} steps)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(output_dir) / LOSS_CHART
    fig.savefig(path)
    plt.close(fig)
    return path
