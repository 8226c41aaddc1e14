"""The gateway's way to the accounting shards (MAAS_ACCOUNTING_SHARDS, 1 by default): which shard a call goes
to, one admission batcher per shard, heartbeats to every shard, and /metrics over all of them.

A shard stays the authority on a key: the gateway remembers which shard a key's project belongs to only to
pick where to ask, so a deleted key is refused by its shard on the very next call. A key not seen yet goes to
the shard its hash picks; that shard answers `{"shard": j}` when the key's project is shard j's, and the call
goes there (one extra round trip, the first time a replica sees the key).
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from functools import partial
from typing import Any

import ray

from serve_apps.contract import (NAMESPACE, Admission, AdmissionRequest, Settlement, reservation_shard,
                                 settlement_shard, shard_actor)
from serve_apps.errors import PlatformError
from serve_apps.gateway.admission import NaturalBatcher, is_actor_error

log = logging.getLogger("maas.gateway")
HEARTBEAT_S = 3.0  # "this replica is alive", to every shard (their GATEWAY_LEASE_S is 15 s)


class AccountingShards:
    def __init__(self, shards: int, gateway: str, namespace: str = NAMESPACE, getter=None):
        self.count, self._gateway = shards, gateway
        # getter(shard): the actor handle of a shard (by name; it is the same handle after a restart)
        self._get = getter or (lambda shard: ray.get_actor(shard_actor(shard), namespace=namespace))
        self._actors: dict[int, Any] = {}
        # key hash -> its project's shard; only keys a shard knew (random keys are never remembered)
        self._key_shards: dict[str, int] = {}
        self._admissions = [NaturalBatcher(partial(self._admit_batch, shard)) for shard in range(shards)]
        self._heartbeat: asyncio.Task | None = None

    async def actor(self, shard: int):
        handle = self._actors.get(shard)
        if handle is None:
            try:
                handle = self._actors[shard] = self._get(shard)
            except ValueError:
                raise PlatformError("MaaS.0503", reason="the accounting service is not up yet") from None
        return handle

    def key_shard(self, key_hash: str) -> int:
        if self.count == 1:
            return 0
        known = self._key_shards.get(key_hash)
        return known if known is not None else zlib.crc32(key_hash.encode()) % self.count

    async def _ask(self, request: AdmissionRequest) -> Admission:
        """A key this replica has not placed yet may be asked of any shard: one that is restarting is skipped, so
        that it holds back its own projects' calls only."""
        first = self.key_shard(request.key_hash)
        if self.count == 1 or request.key_hash in self._key_shards:
            return await self._admissions[first](request)
        for step in range(self.count):
            try:
                return await self._admissions[(first + step) % self.count](request)
            except Exception as exc:
                if not is_actor_error(exc) or step == self.count - 1:
                    raise
        raise AssertionError("unreachable")

    def settlement_shard(self, settlement: Settlement) -> int:
        return settlement_shard(settlement, self.count)

    async def admit(self, request: AdmissionRequest) -> Admission:
        answer = await self._ask(request)
        if "shard" in answer:  # the key's project is another shard's: that shard admits it
            shard = answer["shard"]
            answer = await self._admissions[shard](request)
            if "shard" in answer:  # only if shards run with different counts (get_or_create refuses that)
                raise PlatformError("MaaS.0503", reason="the accounting shards disagree; try again")
            self._key_shards[request.key_hash] = shard
        elif "caller" not in answer:
            self._key_shards.pop(request.key_hash, None)  # a deleted key: nothing left to route
        return answer

    async def _admit_batch(self, shard: int, requests: list[AdmissionRequest]) -> list[Admission]:
        actor = await self.actor(shard)
        if self._heartbeat is None or self._heartbeat.done():
            self._heartbeat = asyncio.get_running_loop().create_task(self._beat())
        try:
            return await actor.admit_many.remote(requests, self._gateway)
        except Exception as exc:
            if is_actor_error(exc):
                self._actors.pop(shard, None)
            raise

    async def _beat(self) -> None:
        """Tell every shard every HEARTBEAT_S that this replica is alive (and so will settle what it carries)."""
        while True:
            for shard in range(self.count):
                try:
                    (await self.actor(shard)).heartbeat.remote(self._gateway)
                except Exception as exc:  # noqa: BLE001  (a shard restarts: the next beat finds it again)
                    self._actors.pop(shard, None)
                    log.debug("heartbeat to shard %d not sent (%s)", shard, exc)
            await asyncio.sleep(HEARTBEAT_S)

    async def witnessed(self, reservation: str, wait_s: float = 0.0) -> tuple[int, int] | None:
        """The engine's report of a call (prompt, completion), if its shard has one or gets it within wait_s."""
        return await (await self.actor(reservation_shard(reservation))).witnessed.remote(reservation, wait_s)

    async def list_models(self, key_hash: str):
        return await (await self.actor(self.key_shard(key_hash))).list_models.remote(key_hash)

    async def metrics_text(self, admin_key_hash: str | None) -> bytes | None:
        actors = [await self.actor(shard) for shard in range(self.count)]
        texts = await asyncio.gather(*[actor.metrics_text.remote(admin_key_hash) for actor in actors])
        if any(text is None for text in texts):
            return None
        return texts[0] if self.count == 1 else merge_expositions(texts)


def merge_expositions(texts: list[bytes]) -> bytes:
    """One Prometheus exposition of several shards': each metric family once (its HELP and TYPE lines), with
    every shard's samples (their label sets differ: each shard counts its own projects)."""
    families: dict[str, list[str]] = {}
    for text in texts:
        family: list[str] | None = None
        for line in text.decode().splitlines():
            if line.startswith("# HELP "):
                family = families.setdefault(line, [line])
            elif family is None:
                continue
            elif line.startswith("# TYPE "):
                if len(family) == 1:
                    family.append(line)
            elif line:
                family.append(line)
    return "".join(line + "\n" for family in families.values() for line in family).encode()
