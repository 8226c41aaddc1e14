"""Where autoscaling decisions go so that the control plane can show them: a small named Ray actor that keeps
the latest decisions of every application (the policy runs inside Serve's controller, which has no other
channel out). Public Ray API only.
"""

from __future__ import annotations

from collections import deque

import ray

NAME = "maas-scaling-decisions"
NAMESPACE = "maas"
KEPT = 2000


@ray.remote(num_cpus=0, max_restarts=-1)
class DecisionLog:
    """Decisions in arrival order, each with a sequence number a reader resumes from."""

    def __init__(self) -> None:
        self.items: deque[tuple[int, str, dict]] = deque(maxlen=KEPT)
        self.seq = 0

    def record(self, app_name: str, decision: dict) -> None:
        self.seq += 1
        self.items.append((self.seq, app_name, decision))

    def since(self, seq: int) -> list[tuple[int, str, dict]]:
        return [item for item in self.items if item[0] > seq]


def ensure_log():
    """The log's handle, created if missing (detached: it outlives the control plane's replica)."""
    return DecisionLog.options(name=NAME, namespace=NAMESPACE, lifetime="detached", get_if_exists=True).remote()


class Publisher:
    """Sends decisions to the log without ever blocking the caller on it (the log may not exist yet)."""

    def __init__(self) -> None:
        self._log = None

    def publish(self, app_name: str, decision: dict) -> None:
        try:
            if self._log is None:
                self._log = ray.get_actor(NAME, namespace=NAMESPACE)
            self._log.record.remote(app_name, decision)
        except Exception:  # no log (no control plane): the decision still applies, it is only not shown
            self._log = None
