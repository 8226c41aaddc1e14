"""Autoscaling decisions as service events: every change of a service's replica target (time, from -> to,
the reason and the signal values) is written as an event of the service and kept as its `last_scaling`.

The `llm` policy runs inside Serve's controller and publishes each decision to the decision log actor
(autoscaling/decisions.py); Serve's own `requests` policy publishes nothing, so its target changes are taken
from what Serve reports. The reconciler calls `ScalingEvents.record` on every pass.
"""

from __future__ import annotations

import logging
import time

from sqlalchemy import update

from cluster.runtime.events import Notification, record_event
from cluster.services.lifecycle import AppState, service_id_of
from cluster.state.db import Service, session_scope

log = logging.getLogger("maas.reconciler")


def describe(decision: dict) -> str:
    signals = decision.get("signals") or {}
    measured = ", ".join(f"{name} {signals[name]:g}" for name in ("waiting", "queued", "running", "ongoing")
                         if signals.get(name) is not None)
    if signals.get("kv_usage") is not None:
        measured += f", KV {signals['kv_usage']:.0%}"
    return (f"Autoscaled {decision['from_replicas']} -> {decision['to_replicas']} ({decision.get('policy', '?')}): "
            f"{decision.get('reason', '')}" + (f"; {measured}" if measured else ""))


class ScalingEvents:
    def __init__(self) -> None:
        self.started = time.time()
        self.cursor = 0
        self.log = None
        self.targets: dict[str, int | None] = {}

    def _published(self) -> list[tuple[str, dict]]:
        """New decisions of the llm policy (none if the decision log cannot be reached this pass)."""
        import ray

        from autoscaling.decisions import ensure_log

        try:
            if self.log is None:
                self.log = ensure_log()
            items = ray.get(self.log.since.remote(self.cursor), timeout=5)
        except Exception as exc:  # the next pass asks again
            log.warning("autoscaling decision log unavailable: %s", exc)
            self.log = None
            return []
        if items:
            self.cursor = items[-1][0]
        return [(app, decision) for _seq, app, decision in items if decision.get("at", 0) >= self.started - 1]

    def _observed(self, apps: dict[str, AppState]) -> list[tuple[str, dict]]:
        """Target changes nobody publishes: those of Serve's requests policy, and a wake from zero (Serve starts
        the first replica itself when a request waits, before any policy runs)."""
        found = []
        previous, self.targets = self.targets, {name: app.target for name, app in apps.items()}
        for name, app in apps.items():
            before, mode = previous.get(name), app.scaling_key[0]
            if None in (before, app.target) or before == app.target:
                continue
            if mode == "requests":
                reason = "Serve's policy: ongoing requests per replica against the target"
            elif mode == "llm" and before == 0:
                reason = "woken by a request (Serve's cold start)"
            else:
                continue
            found.append((name, {"at": time.time(), "from_replicas": before, "to_replicas": app.target,
                                 "policy": mode, "signals": {}, "reason": reason}))
        return found

    def record(self, database_url: str, apps: dict[str, AppState]) -> list[Notification]:
        notes = []
        for app_name, decision in self._published() + self._observed(apps):
            service_id = service_id_of(app_name)
            if service_id is None:  # a built-in model's application: no service to tell
                continue
            with session_scope(database_url) as session:
                row = session.get(Service, service_id)
                if row is None:
                    continue
                session.execute(update(Service).where(Service.id == service_id).values(last_scaling=decision)
                                .execution_options(synchronize_session=False))
                note = record_event(session, row, row.status, describe(decision), status_changed=False)
            if note:
                notes.append(note)
        return notes
