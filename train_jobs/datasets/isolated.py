"""Dataset validation in a child process whose memory is capped (RLIMIT_AS), for a caller that must not grow
(the control plane): whatever a file holds, the child is what runs out, and the file is refused with a reason.

`python -m train_jobs.datasets.isolated` reads its request (JSON) on stdin and writes the DatasetCheck on stdout.
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import subprocess
import sys
import threading
from pathlib import Path

from .reader import DatasetCheck, check_dataset
from .schema import DatasetLimits, RowError

PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # where `train_jobs` is importable from
MAX_RUNNING = 2  # children at once per caller process: the caller's node gives them at most 2 x the memory cap
_running = threading.BoundedSemaphore(MAX_RUNNING)


def check_isolated(path: str | os.PathLike, fmt: str, kind: str, limits: DatasetLimits, memory_bytes: int,
                   timeout_s: float) -> DatasetCheck:
    """check_dataset in a child capped at `memory_bytes` of address space and `timeout_s` of wall time; a file
    that needs more memory or time is reported as the file's error."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"dataset file not found: {path}")
    request = {"path": str(path), "fmt": fmt, "kind": kind, "limits": dataclasses.asdict(limits),
               "memory_bytes": memory_bytes, "cpu_s": int(timeout_s) + 1}
    env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [str(PACKAGE_ROOT),
                                                                    os.environ.get("PYTHONPATH")]))}
    with _running:
        try:
            done = subprocess.run([sys.executable, "-m", __name__], input=json.dumps(request), capture_output=True,
                                  text=True, timeout=timeout_s, env=env, cwd=PACKAGE_ROOT)
        except subprocess.TimeoutExpired:
            return _refused(f"validating the file took longer than {timeout_s:g} s; split it into smaller files")
    if done.returncode != 0:
        if "MemoryError" in done.stderr:
            return _refused(_needs_more(memory_bytes))
        return _refused(f"the validator stopped (exit status {done.returncode}); the file cannot be read")
    answer = json.loads(done.stdout)
    return DatasetCheck(samples=answer["samples"], errors=[RowError(**e) for e in answer["errors"]],
                        stopped=answer["stopped"])


def _refused(reason: str) -> DatasetCheck:
    return DatasetCheck(samples=0, errors=[RowError(line=0, field="file", reason=reason)])


def _needs_more(memory_bytes: int) -> str:
    return f"validating the file needs more than {memory_bytes // 2**20} MiB of memory; split it into smaller files"


def main() -> None:
    request = json.loads(sys.stdin.read())
    memory = request["memory_bytes"]
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_CPU, (request["cpu_s"], request["cpu_s"]))
    try:
        check = check_dataset(request["path"], request["fmt"], request["kind"], DatasetLimits(**request["limits"]))
    except MemoryError:
        check = _refused(_needs_more(memory))
    answer = {"samples": check.samples, "errors": [e.model_dump() for e in check.errors], "stopped": check.stopped}
    sys.stdout.write(json.dumps(answer))


if __name__ == "__main__":
    main()
