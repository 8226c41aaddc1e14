"""The gateway's admission client and one call's accounting: admissions batched to the accounting actor,
each call's timings and usage, and the settlement that makes its usage record durable in the actor. A record is re-sent until the actor acknowledges it (the
actor writes it to SQL first), so killing the actor loses nothing that was answered."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
import uuid
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Awaitable, Callable

import ray

from serve_apps.contract import RecordBase, Settlement, UsageRecord
from serve_apps.settings import plane_settings

log = logging.getLogger("maas.gateway")


@dataclass
class Call:
    record: RecordBase  # project, key id, service, endpoint, model: from the actor's admission answer
    client_ip: str
    reservation: str | None = None
    stream: bool = False
    started: float = field(default_factory=time.perf_counter)
    ts: float = field(default_factory=time.time)
    first_chunk_at: float | None = None
    last_chunk_at: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    usage_final: bool = False  # the engine's final usage was seen (else the counts are what was delivered)
    cut: bool = False  # the stream was ended here (moderation): billed with the engine's count, as a broken one
    settled: bool = False
    playground: bool = False  # X-MaaS-Playground: 1 (the console's playground; spec §5.1)
    replica_wait_ms: float | None = None  # until an engine replica took the call (a cold start from zero)
    ended_at: float | None = None  # when the answer ended, if its settlement waits (a broken stream's count)

    def usage(self, usage: Any) -> None:
        if usage is None:
            return
        get = usage.get if isinstance(usage, dict) else lambda k, d=0: getattr(usage, k, d)
        self.prompt_tokens = get("prompt_tokens", 0) or 0
        self.completion_tokens = get("completion_tokens", 0) or 0

    def chunk_seen(self) -> None:
        now = time.perf_counter()
        if self.first_chunk_at is None:
            self.first_chunk_at = now
        self.last_chunk_at = now

    def result(self, status: int, error_code: str = "") -> UsageRecord:
        ttft = tpot = None
        if self.stream and self.first_chunk_at is not None:
            ttft = (self.first_chunk_at - self.started) * 1000
            if self.completion_tokens > 1:
                tpot = (self.last_chunk_at - self.first_chunk_at) * 1000 / (self.completion_tokens - 1)
        return self.record | {
            # The reservation id when there is one: the engine's report of the call (serve_apps.witness) and this
            # record are then the same call to the actor, counted once whichever comes first.
            "request_id": self.reservation or uuid.uuid4().hex, "ts": self.ts, "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens, "status_code": status, "error_code": error_code,
            "latency_ms": ((self.ended_at or time.perf_counter()) - self.started) * 1000, "ttft_ms": ttft, "tpot_ms": tpot,
            "client_ip": self.client_ip, "stream": self.stream, "playground": self.playground,
            "replica_wait_ms": self.replica_wait_ms,
        }


class NaturalBatcher:
    """Calls that arrive while one is in flight go together in the next one: no waiting when idle, one
    round trip for many calls under load (how one actor serves thousands of admissions a second)."""

    def __init__(self, send: Callable[[list], Awaitable[list]]):
        self._send = send
        self._queue: list[tuple[Any, asyncio.Future]] = []
        self._busy = False

    async def __call__(self, item: Any) -> Any:
        future = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if not self._busy:
            self._busy = True
            asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                try:
                    results = await self._send([item for item, _ in batch])
                except Exception as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), result in zip(batch, results):
                    if not future.done():
                        future.set_result(result)
        finally:
            self._busy = False


class Settler:
    """Sends settlements in the background, batched per accounting shard (`actor(shard)`, `shard_of(settlement)`),
    and re-sends each until its shard acknowledges it: a shard that restarts holds back only its own."""

    def __init__(self, actor: Callable[[int], Awaitable[Any]], shard_of: Callable[[Settlement], int] = lambda _: 0):
        self._actor, self._shard_of = actor, shard_of
        self._pending: set[asyncio.Task] = set()
        self._batchers: dict[int, NaturalBatcher] = {}

    def submit(self, call: Call, status: int, error_code: str = "") -> None:
        if call.settled:
            return
        call.settled = True
        task = asyncio.get_running_loop().create_task(self._send(Settlement(call.reservation, call.result(status, error_code))))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def submit_after(self, first: Awaitable, call: Call, status: int, error_code: str = "") -> None:
        """Settle once `first` is done (it may correct the call's counts); pending meanwhile."""
        async def later() -> None:
            try:
                await first
            except Exception as exc:  # noqa: BLE001  (the counts the call has stand)
                log.warning("usage of %s not corrected (%s)", call.reservation, type(exc).__name__)
            self.submit(call, status, error_code)

        task = asyncio.get_running_loop().create_task(later())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _send_batch(self, shard: int, settlements: list[Settlement]) -> list:
        actor = await self._actor(shard)
        await actor.settle_many.remote(settlements)
        return [None] * len(settlements)

    async def _send(self, settlement: Settlement) -> None:
        delay = 0.2
        shard = self._shard_of(settlement)
        batcher = self._batchers.get(shard)
        if batcher is None:
            batcher = self._batchers[shard] = NaturalBatcher(partial(self._send_batch, shard))
        while True:
            try:
                await batcher(settlement)
                return
            except Exception as exc:  # the actor restarts (Ray re-creates it); the record waits here
                log.warning("usage record %s not acknowledged yet (%s); re-sending", settlement.record["request_id"], exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def drain(self, timeout_s: float) -> int:
        """Wait (at most `timeout_s`) until every pending settlement is acknowledged; returns how many are
        still pending. A replica stopped on purpose (scale-in, upgrade, `maas down`) calls this first."""
        deadline = time.monotonic() + timeout_s
        while self._pending and (left := deadline - time.monotonic()) > 0:  # a task may add a settlement
            await asyncio.wait(list(self._pending), timeout=left)
        return len(self._pending)


def client_ip(headers, client, trusted: list | None = None, nodes: NodeAddresses | None = None) -> str:
    """The caller's IP. Behind the platform's HAProxy (serve_apps.haproxy_peer) the peer is HAProxy, on a Ray
    node, and X-Maas-Peer names the one that called it: believed only from a node's address, and only as an IP.
    When that peer is a trusted proxy (MAAS_TRUSTED_PROXIES), X-Forwarded-For is read from the right (proxies
    append): the right-most hop that is not a trusted proxy is the caller (spec §9.2). A value that is not an
    IP address anywhere on that path makes the caller unknown (""), never what a caller wrote."""
    peer = client.host if client else ""
    relayed = headers.get("x-maas-peer", "").strip()
    if relayed and (NODES if nodes is None else nodes).has(peer):
        peer = relayed
    if not _is_ip(peer):
        return ""
    trusted = plane_settings().trusted_proxy_networks if trusted is None else trusted
    forwarded = headers.get("x-forwarded-for", "")
    if not forwarded or not _in(peer, trusted):
        return peer
    hops = [hop.strip() for hop in forwarded.split(",")]
    for hop in reversed(hops):
        if not _is_ip(hop):
            return ""
        if not _in(hop, trusted):
            return hop
    return hops[0]  # every hop a trusted proxy: the first is where the call came from


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


class NodeAddresses:
    """The Ray cluster's node addresses (and loopback), where the platform's HAProxy runs. An address not
    known yet re-reads the cluster's nodes, at most once every `refresh_s` (a node that joined since)."""

    def __init__(self, read: Callable[[], set[str]] | None = None, refresh_s: float = 5.0):
        self._read = read or _ray_node_addresses
        self._refresh_s = refresh_s
        self._known: set[str] = set()
        self._read_at = float("-inf")

    def has(self, address: str) -> bool:
        try:
            if ipaddress.ip_address(address).is_loopback:
                return True
        except ValueError:
            return False
        if address not in self._known and time.monotonic() - self._read_at >= self._refresh_s:
            self._read_at = time.monotonic()
            try:
                self._known = self._read()
            except Exception:  # the GCS away: keep what was known
                log.warning("could not read the Ray nodes' addresses", exc_info=True)
        return address in self._known


def _ray_node_addresses() -> set[str]:
    return {node["NodeManagerAddress"] for node in ray.nodes() if node.get("Alive")}


NODES = NodeAddresses()


def _in(address: str, networks: list) -> bool:
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(parsed in network for network in networks)


def estimate_prompt_tokens(text: str) -> int:
    """Admission reserves this (≈ 1 token per 4 bytes) plus the completion the call may produce against
    TPM; the engine's real usage replaces it when the call is settled."""
    return len(text.encode()) // 4 + 1


def is_actor_error(exc: Exception) -> bool:
    return isinstance(exc, (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError))
