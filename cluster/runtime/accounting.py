"""How the control plane reaches the accounting actor: by name, and a reload after every change that an
admission depends on (committed first, then reloaded)."""

from __future__ import annotations

import logging

import ray

from serve_apps.contract import ACCOUNTING_ACTOR, NAMESPACE


def accounting_actor():
    return ray.get_actor(ACCOUNTING_ACTOR, namespace=NAMESPACE)


async def reload_accounting() -> None:
    await accounting_actor().reload.remote()


def reload_accounting_blocking(log: logging.Logger) -> None:
    """The same from a background thread (reconciler, job sync): waits, and never raises (a restarting actor
    reloads from SQL by itself)."""
    try:
        ray.get(accounting_actor().reload.remote(), timeout=30)
    except Exception:  # noqa: BLE001
        log.exception("reloading the accounting actor failed")
