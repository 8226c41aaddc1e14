"""How the control plane reaches the accounting actor: by name (shard 0, or every shard), and a reload of every
shard after every change that an admission depends on (committed first, then reloaded)."""

from __future__ import annotations

import asyncio
import logging

import ray

from cluster.settings import get_settings
from serve_apps.contract import NAMESPACE, shard_actor


def accounting_actor(shard: int = 0):
    """Shard 0 is also the one that holds the engines' token totals (`engine_deltas`)."""
    return ray.get_actor(shard_actor(shard), namespace=NAMESPACE)


def accounting_shards() -> list:
    return [accounting_actor(shard) for shard in range(get_settings().accounting_shards)]


async def on_every_shard(method: str, *args) -> None:
    """Every shard knows every key and route (any shard can tell a caller's project)."""
    await asyncio.gather(*[getattr(shard, method).remote(*args) for shard in accounting_shards()])


async def reload_accounting() -> None:
    await on_every_shard("reload")


def reload_accounting_blocking(log: logging.Logger) -> None:
    """The same from a background thread (reconciler, job sync): waits, and never raises (a restarting actor
    reloads from SQL by itself)."""
    try:
        ray.get([shard.reload.remote() for shard in accounting_shards()], timeout=30)
    except Exception:  # noqa: BLE001
        log.exception("reloading the accounting actor failed")
