"""The engine's side of settlement (issue 11): every engine replica reports to the accounting actor what it
generated for each admitted call, by the call's reservation id. The gateway replica that carried the call
settles it as usual; if that gateway died before it could (kill -9, a lost node), the actor settles the call
from this report after a lease (`cluster.accounting.actor.GATEWAY_LEASE_S`). The actor counts a call once,
whoever's settlement comes first (the record's request id is the reservation id on both sides).

The report costs the stream nothing per chunk: the batch last yielded is kept, and only when the call ends is
its last `"usage":{...}` read (every chunk carries the running count: the gateway asks for
continuous_usage_stats). Reports travel in batches, in the background; a report the actor cannot take is
retried a few times and then dropped (the gateway's own settlement is the rule, this is the fallback).
With accounting shards, each report goes to the shard its reservation id names; the engine's token totals go
to shard 0 only (so `maas usage audit` counts them once).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections import OrderedDict
from typing import Any, AsyncGenerator

import ray

from serve_apps.contract import NAMESPACE, EngineTotals, WitnessReport, reservation_shard, shard_actor

log = logging.getLogger("maas.witness")
MAX_QUEUED_REPORTS = 10_000
SEND_ATTEMPTS = 5
TOTALS_EVERY_S = 5.0  # how often an engine replica's token counters go to the actor (when they moved)
ABORTS_KEPT = 4096  # the final counts of aborted requests, until their call's report takes them
ABORT_WAIT_S = 2.0  # how long a broken call's report waits for its request's abort in vLLM


# vLLM's request id of an admitted call (serve_apps.model_app): chat (and Anthropic Messages, a chat inside vLLM)
# `chatcmpl-<reservation>`, completions `cmpl-<reservation>`, Responses `resp_<reservation>_<n>`; a request of
# several prompts adds `_<i>`. A reservation is 32 hex digits, `s<shard>-` first on shards other than 0.
ENGINE_REQUEST_ID = re.compile(r"(?:chatcmpl-|cmpl-|resp_)(?P<reservation>(?:s\d+-)?[0-9a-f]{32})(?:_\d+)?")


def object_end(text: str, start: int) -> int:
    """The index after the JSON object that opens at `start` (counting braces: usage holds no strings)."""
    depth = 0
    for index in range(start, len(text)):
        char = text[index]
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return index + 1
    return len(text)


def _counts(usage: Any) -> tuple[int, int] | None:
    if usage is None:
        return None
    if not isinstance(usage, dict):
        usage = usage.model_dump() if hasattr(usage, "model_dump") else dict(vars(usage))
    prompt = usage.get("prompt_tokens", usage.get("input_tokens")) or 0
    completion = usage.get("completion_tokens", usage.get("output_tokens")) or 0
    return int(prompt), int(completion)


def usage_of(item: Any) -> tuple[int, int] | None:
    """(prompt, completion) tokens of what an engine method yielded last: a batch of SSE strings (the last
    usage object in it), or a whole answer (its `usage`)."""
    if item is None:
        return None
    if isinstance(item, list):
        for text in reversed(item):
            if isinstance(text, str) and (start := text.rfind('"usage":{')) >= 0:
                try:
                    return _counts(json.loads(text[start + 8:object_end(text, start + 8)]))
                except ValueError:
                    return None
        return None
    if isinstance(item, dict):
        return _counts(item.get("usage"))
    return _counts(getattr(item, "usage", None))


class UsageWitness:
    """One per engine replica: queues reports and sends them to the actor in batches; counts the tokens the
    engine processed (every step, as vLLM's Prometheus counters do) and sends the totals every few seconds."""

    def __init__(self, actor_getter=None, replica: str = "", app_name: str = ""):
        # actor_getter(shard): the handle of accounting shard `shard`
        self._get_actor = actor_getter or (lambda shard: ray.get_actor(shard_actor(shard), namespace=NAMESPACE))
        self._actors: dict[int, object] = {}  # shard -> its handle
        self._queue: list[WitnessReport] = []
        self._sending = False
        self.replica, self.app_name = replica, app_name
        self.prompt_total = self.generation_total = 0
        self._ticking = False
        self._aborted: OrderedDict[str, tuple[int, int]] = OrderedDict()  # reservation -> vLLM's final counts
        self._waiting: set[asyncio.Task] = set()  # broken calls' reports waiting for their abort
        self._abort_seen: dict[str, asyncio.Event] = {}  # reservation -> set when vLLM aborts its request

    def broken(self, reservation: str, counts: tuple[int, int] | None, started: float, stream: bool) -> None:
        task = asyncio.get_running_loop().create_task(self.report_broken(reservation, counts, started, stream))
        self._waiting.add(task)
        task.add_done_callback(self._waiting.discard)

    def aborted(self, external_request_id: str, prompt: int, generation: int) -> None:
        """vLLM aborted a request (serve_apps.ray_compat.watch_aborts): its final counts. The engine methods
        give a call's request the reservation id (`chatcmpl-<reservation>`, `cmpl-<reservation>`)."""
        named = ENGINE_REQUEST_ID.fullmatch(external_request_id)
        if named is None:  # not a call of the platform's (a request sent to the engine some other way)
            return
        reservation = named["reservation"]
        before = self._aborted.pop(reservation, (0, 0))  # parallel samples (n > 1) are aborted one by one
        self._aborted[reservation] = (max(before[0], prompt), before[1] + generation)
        while len(self._aborted) > ABORTS_KEPT:
            self._aborted.popitem(last=False)
        if (seen := self._abort_seen.get(reservation)) is not None:  # (vLLM calls this on the replica's loop)
            seen.set()

    async def report_broken(self, reservation: str, counts: tuple[int, int] | None, started: float,
                            stream: bool) -> None:
        """A call that ended before its answer did (its caller gone, cancelled): vLLM aborts its request as the
        stream unwinds, in another task; its final counts (what vLLM's counters hold for it: the tokens still
        in its output queue included) replace the last chunk's when they come within ABORT_WAIT_S."""
        if reservation not in self._aborted:
            seen = self._abort_seen.setdefault(reservation, asyncio.Event())
            try:
                await asyncio.wait_for(seen.wait(), ABORT_WAIT_S)
            except TimeoutError:
                pass
            finally:
                self._abort_seen.pop(reservation, None)
        final = self._aborted.pop(reservation, None)
        if final is not None:
            counts = final if counts is None else (max(counts[0], final[0]), max(counts[1], final[1]))
        if counts is not None:
            self.report(reservation, counts[0], counts[1], started, stream)

    def count(self, prompt: int, generation: int) -> None:
        """One engine step's tokens (called by vLLM's stat logger hook, on the engine's event loop)."""
        if not prompt and not generation:
            return
        self.prompt_total += prompt
        self.generation_total += generation
        if not self._ticking:
            try:
                asyncio.get_running_loop().create_task(self._push_totals())
                self._ticking = True
            except RuntimeError:  # not on an event loop: the next step starts it
                pass

    async def _push_totals(self) -> None:
        sent, failing = None, False
        while True:
            now = (self.prompt_total, self.generation_total)
            if now != sent:
                try:
                    await self._actor(0).engine_totals.remote(EngineTotals(self.replica, self.app_name, *now,
                                                                           time.time()))
                    sent = now
                except Exception as exc:  # noqa: BLE001  (the actor restarts: sent again next time)
                    self._actors.pop(0, None)
                    # Once per outage, not every 5 s (an engine may also run without the platform's actor).
                    (log.debug if failing else log.warning)("engine token totals not taken (%s)", type(exc).__name__)
                    failing = True
                else:
                    failing = False
            await asyncio.sleep(TOTALS_EVERY_S)

    def _actor(self, shard: int):
        if shard not in self._actors:
            self._actors[shard] = self._get_actor(shard)
        return self._actors[shard]

    def report(self, reservation: str, prompt: int, completion: int, started: float, stream: bool) -> None:
        if len(self._queue) >= MAX_QUEUED_REPORTS:
            self._queue.pop(0)
            log.warning("usage reports queue full (the accounting actor is unreachable): oldest dropped")
        self._queue.append(WitnessReport(reservation, prompt, completion, started, stream))
        if not self._sending:
            self._sending = True
            asyncio.get_running_loop().create_task(self._send())

    async def _send(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                shards: dict[int, list[WitnessReport]] = {}
                for report in batch:
                    shards.setdefault(reservation_shard(report.reservation), []).append(report)
                await asyncio.gather(*[self._send_to(shard, reports) for shard, reports in shards.items()])
        finally:
            self._sending = False

    async def _send_to(self, shard: int, reports: list[WitnessReport]) -> None:
        for attempt in range(SEND_ATTEMPTS):
            try:
                await self._actor(shard).witness_many.remote(reports)
                return
            except Exception as exc:  # noqa: BLE001  (the actor restarts; try again shortly)
                self._actors.pop(shard, None)
                log.warning("usage reports not taken (%s); attempt %d", type(exc).__name__, attempt + 1)
                await asyncio.sleep(0.2 * 2 ** attempt)


async def witnessed(generator: AsyncGenerator, reservation: str | None, witness: UsageWitness,
                    stream: bool) -> AsyncGenerator:
    """Yield what the engine yields; when the call ends (done, cancelled, or its caller gone), report its usage."""
    if reservation is None:
        async for item in generator:
            yield item
        return
    started, before, last, finished = time.time(), None, None, False
    try:
        async for item in generator:
            before, last = last, item
            yield item
        finished = True
    finally:
        # The final usage chunk may travel alone before `[DONE]`: the batch before the last one has it then.
        counts = next((c for c in map(usage_of, (last, before)) if c is not None), None)
        try:
            if finished:
                if counts is not None:
                    witness.report(reservation, counts[0], counts[1], started, stream)
            else:
                witness.broken(reservation, counts, started, stream)
        except RuntimeError:  # closed outside an event loop (garbage collection): nothing to report with
            log.warning("usage of %s not reported: no event loop", reservation)
