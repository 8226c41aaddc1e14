"""The shared accounting actor: one named, detached, restartable Ray actor every gateway replica asks.

It is the single source of truth for "who is calling, what does the name they used mean, may they call it
now" (keys, routes, preset grants, RPM/TPM/QPS windows) and for token usage: every call of a known caller
is settled here and written to SQL before `settle` returns (group commit), so a gateway that keeps
re-sending an unacknowledged record (Ray retries actor tasks across restarts) loses none.

After a restart the windows are rebuilt from the last minute of usage records, so limits keep holding.

Sharded (MAAS_ACCOUNTING_SHARDS > 1): shard i admits and settles the calls of the projects `project_shard` gives
it; every limit is per project, so each stays exact. Every shard loads every key, so any shard can tell a
caller's project; it answers `{"shard": j}` for another shard's caller. A restart of one shard (it rebuilds
its own projects' windows) touches no other shard's projects. The engines' token totals go to shard 0 only.
The gateway depends only on `serve_apps.contract` (the types and `ActorMethods`: `admit_many`,
`settle_many`, `list_models`, `metrics_text`; `admit` and `settle` are the one-call forms).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections import deque
from typing import NamedTuple

import ray
from sqlalchemy import func, select

from cluster.accounting import store
from cluster.accounting.engine_audit import EngineCounters
from cluster.accounting.metrics import UsageMetrics
from cluster.accounting.refusals import RefusalFolder, is_refusal
from cluster.auth import playground_proof
from cluster.accounting.routes import CALLABLE_STATUSES, RouteTable, load_routes
from cluster.accounting.windows import Limit, Reservation, Windows
from cluster.state.db import AdminKey, ApiKey, UsageRecord, session_scope
from serve_apps.contract import (NAMESPACE, Admission, AdmissionRequest, Caller, EndpointRoute, ModelList, RecordBase,
                                 Route, Settlement, UsageRecord as UsageRecordDict, EngineTotals, WitnessReport,
                                 new_reservation, project_shard, shard_actor)

log = logging.getLogger(__name__)
SETTLED_MEMORY = 200_000
# A gateway replica that has not said it is alive for this long is dead: the engines' reports of the calls it
# carried settle them (status 502, MaaS.0502). Gateways say so every HEARTBEAT_S (serve_apps.gateway.shards).
GATEWAY_LEASE_S = 15.0
SWEEP_INTERVAL_S = 2.0
# A call whose gateway died and whose engine never reported (both gone) is settled with no tokens after this.
RESERVATION_LEASE_S = 3600.0
WITNESS_WAIT_MAX_S = 10.0  # the longest a gateway's question for an engine's report of a call may wait



class Held(NamedTuple):
    """An admitted call's reservation, held until its settlement."""

    windows: Reservation  # its entries in the token windows
    record: RecordBase
    quota_key: tuple[str, str] | None  # the free quota it draws on
    admitted_at: float
    gateway: str | None  # the gateway replica that carries it


class Denied(Exception):
    def __init__(self, code: str, **params):
        self.code, self.params = code, params

LIMIT_CODES = ("ModelArts.81101", "ModelArts.81103", "MaaS.0429")


def _may_exceed_context(route: Route, prompt_tokens: int, max_tokens: int | None) -> bool:
    """Whether a text-generation call could be over its model's context. `prompt_tokens` estimates ~4 bytes a
    token, and no tokenizer here makes more than one token a byte: the prompt is at most 4x the estimate, plus
    its chat template."""
    context = route["card"].get("context_length", 0)
    return bool(context and "text-generation" in route["card"].get("types", [])
                and 4 * prompt_tokens + 64 + (max_tokens or 1) > context)


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1, max_concurrency=1000)
class AccountingActor:
    def __init__(self, database_url: str, shard: int = 0, shards: int = 1, retention_days: int = 180):
        self._url = database_url
        self._retention_s, self._pruned_at = retention_days * 86400.0, 0.0
        self._refusals = RefusalFolder()
        self._shard, self._shards = shard, shards
        self._keys: dict[str, dict] = {}  # key hash -> key id, project, hash
        self._routes = RouteTable()
        self._free_used: dict[tuple[str, str], int] = {}
        self._windows = Windows()
        self._reservations: dict[str, Held] = {}  # reservation id -> what it holds
        self._witnessed: dict[str, WitnessReport] = {}  # reservation id -> the engine's count of the call
        self._witness_waits: dict[str, asyncio.Event] = {}  # reservation id -> set when its report arrives
        self._gateways: dict[str, float] = {}  # gateway replica id -> when it last said it is alive
        self._unswept: list[Settlement] = []  # settlements of dead gateways' calls not yet written
        self._sweeper: asyncio.Task | None = None
        self._engines = EngineCounters(database_url)
        self._durable = store.GroupCommit(lambda rows: self._write(rows))
        self._settled: set[str] = set()  # recent request ids, so a re-sent settlement is not counted twice
        self._settled_order: deque[str] = deque()
        self._metrics = UsageMetrics()
        self._load()
        self._rebuild_windows()
        if shard == 0:
            self._engines.load()

    # -- state from SQL ---------------------------------------------------------------------------
    def _load(self) -> None:
        with session_scope(self._url) as session:
            self._keys = {row.key_hash: {"key_id": row.id, "project_id": row.project_id, "hash": row.key_hash}
                          for row in session.scalars(select(ApiKey))}
            self._admins = list(session.scalars(select(AdminKey.key_hash)))
            self._routes = load_routes(session)
            self._free_used = {}
            for (project_id, model_id), grant in self._routes.grants.items():
                if not grant["granted"] or not self._mine(project_id):
                    continue
                on_offer = (UsageRecord.service_id == model_id) & (UsageRecord.service_type == "free")
                loras = self._routes.lora_ids(project_id, model_id)
                if loras:
                    on_offer = on_offer | UsageRecord.service_id.in_(sorted(loras))
                used = session.scalar(select(func.coalesce(func.sum(
                    UsageRecord.prompt_tokens + UsageRecord.completion_tokens), 0)).where(
                    UsageRecord.project_id == project_id, on_offer, UsageRecord.ts >= grant["since"]))
                self._free_used[(project_id, model_id)] = int(used)

    def _rebuild_windows(self) -> None:
        """Count the last minute's admitted calls again, so a restart does not reset anybody's limits."""
        since = time.time() - 60
        with session_scope(self._url) as session:
            rows = session.scalars(select(UsageRecord).where(UsageRecord.ts >= since, UsageRecord.status_code != 429)
                                   .order_by(UsageRecord.ts)).all()
        for row in rows:
            if not self._mine(row.project_id):
                continue
            endpoint, route = self._routes.resolve(row.project_id, row.model)
            if route is not None:
                limits = self._limits(row.project_id, endpoint, route)
                self._windows.count(limits, row.prompt_tokens + row.completion_tokens, row.ts)

    def _mine(self, project_id: str) -> bool:
        return self._shards == 1 or project_shard(project_id, self._shards) == self._shard

    def layout(self) -> tuple[int, int]:
        """(this shard, of how many): what it was created with."""
        return self._shard, self._shards

    def reload(self) -> int:
        """The control plane calls this after every change of keys, services, endpoints or presets."""
        self._load()
        return len(self._keys)

    def add_key(self, key_hash: str, key_id: str, project_id: str) -> None:
        self._keys[key_hash] = {"key_id": key_id, "project_id": project_id, "hash": key_hash}

    def revoke_key(self, key_hash: str) -> None:
        self._keys.pop(key_hash, None)

    # -- admission ----------------------------------------------------------------------------------
    def _caller(self, key_hash: str) -> Caller | None:
        # The lookup is by SHA-256 digest (nothing an attacker can steer); the final check is constant-time.
        info = self._keys.get(key_hash)
        if info is None or not hmac.compare_digest(info["hash"], key_hash):
            return None
        return {"key_id": info["key_id"], "project_id": info["project_id"]}

    def _limits(self, project_id: str, endpoint: EndpointRoute | None, route: Route) -> list[Limit]:
        limits = []
        if endpoint is not None:
            limits += [Limit(f"ep-rpm:{endpoint['endpoint_id']}", "rpm", endpoint["rpm"]),
                       Limit(f"ep-tpm:{endpoint['endpoint_id']}", "tpm", endpoint["tpm"])]
        if route["preset"] is not None:  # a preset's model-level limits, shared by its LoRA versions
            offer = route.get("offer", route["service_id"])
            limits += [Limit(f"model-rpm:{project_id}:{offer}", "rpm", route["preset"]["rpm"]),
                       Limit(f"model-tpm:{project_id}:{offer}", "tpm", route["preset"]["tpm"])]
        if route["qps"]:
            limits.append(Limit(f"qps:{route['service_id']}", "qps", route["qps"]))
        return limits

    def _check_access(self, project_id: str, name: str, endpoint: EndpointRoute | None, route: Route | None,
                      now: float) -> None:
        if route is None:
            raise Denied("model_not_found")
        if endpoint is not None and not endpoint["enabled"]:
            raise Denied("ModelArts.81004")
        if route["kind"] == "service" and route["status"] not in CALLABLE_STATUSES:
            raise Denied("MaaS.0503", reason=f"the service {route['name']!r} is {route['status']}")
        offer_id = route.get("offer")
        if offer_id is None:  # a project's own service: no preset offer applies
            return
        offer = self._routes.presets.get(offer_id, route)
        service_type, preset = offer["service_type"], offer["preset"]
        grant = self._routes.grants.get((project_id, offer_id))
        if grant is not None and grant["frozen"]:
            raise Denied("ModelArts.81006")
        granted = grant is not None and grant["granted"]  # a freeze alone is no activation
        if service_type == "commercial" and not granted:
            raise Denied("ModelArts.81004")
        if service_type == "free" and preset is not None:
            if preset["expires_at"] is not None and now >= preset["expires_at"]:
                raise Denied("ModelArts.81014")
            if preset["free_quota_tokens"] is not None:
                if not granted:
                    raise Denied("ModelArts.81004")
                if self._free_used.get((project_id, offer_id), 0) >= preset["free_quota_tokens"]:
                    raise Denied("ModelArts.81005")

    async def admit(self, key_hash: str, model: str | None, prompt_tokens: int = 0,
                    max_tokens: int | None = None) -> Admission:
        return self._admit(AdmissionRequest(key_hash, model, prompt_tokens, max_tokens))

    async def admit_many(self, requests: list[AdmissionRequest], gateway: str | None = None) -> list[Admission]:
        """Admissions a gateway replica gathered while its previous call was in flight, in arrival order."""
        if gateway is not None:
            self.heartbeat(gateway)
        return [self._admit(request, gateway) for request in requests]

    def _admit(self, request: AdmissionRequest, gateway: str | None = None) -> Admission:
        request = AdmissionRequest(*request)  # a plain tuple off the wire: its defaults filled
        answer = self._answer(request, gateway)
        if request.playground and "caller" in answer and hmac.compare_digest(
                request.playground.encode(), playground_proof(self._admins, request.key_hash).encode()):
            answer["playground"] = True
        return answer

    def _answer(self, request: AdmissionRequest, gateway: str | None = None) -> Admission:
        """The caller, the route, and a reservation against TPM of the prompt plus what the completion may
        use (`max_tokens`, else the rest of the model's context). No await inside: admissions never interleave."""
        key_hash, model, prompt_tokens, max_tokens, choices, _ = request
        caller = self._caller(key_hash)
        if caller is None:
            return {"error": "ModelArts.81003"}
        if not self._mine(caller["project_id"]):
            return {"shard": project_shard(caller["project_id"], self._shards)}
        if model is None:
            return {"caller": caller, "record": self._record_base(caller, "", None, None)}
        now = time.time()
        endpoint, route = self._routes.resolve(caller["project_id"], model)
        tokens = prompt_tokens
        try:
            self._check_access(caller["project_id"], model, endpoint, route, now)
            if "text-generation" in route["card"].get("types", []):
                context = route["card"].get("context_length", 0)
                per_choice = None if max_tokens is None else max_tokens // max(choices, 1)
                if per_choice is not None and context and per_choice >= context:
                    # It can never run: refused here with the context-length 400 (the gateway has the engine
                    # count the prompt). Every other call is reserved and counted, whatever its budget.
                    raise Denied("context_length", limit=context, max_tokens=per_choice)
                tokens += max_tokens if max_tokens is not None else max(context - prompt_tokens, 0)
            limits = self._limits(caller["project_id"], endpoint, route)
            exceeded = self._windows.first_exceeded(limits, tokens, now)
            if exceeded is not None:
                self._metrics.denied(caller, route, endpoint, exceeded.kind)
                code = {"rpm": "ModelArts.81101", "tpm": "ModelArts.81103", "qps": "MaaS.0429"}[exceeded.kind]
                raise Denied(code, **{exceeded.kind: exceeded.value})
        except Denied as denied:
            answer: Admission = {"caller": caller, "error": denied.code, "params": denied.params,
                                 "record": self._record_base(caller, model, endpoint, route)}
            if denied.code == "context_length" or (denied.code in LIMIT_CODES
                                                   and _may_exceed_context(route, prompt_tokens, max_tokens)):
                # The prompt's estimate may be off either way: the gateway has the engine count it, and a call
                # that cannot fit the context gets the engine's 400 instead of this 429.
                answer |= {"route": route, "context_check": True}
            return answer
        reservation_id = new_reservation(self._shard)
        record = self._record_base(caller, model, endpoint, route)
        self._reservations[reservation_id] = Held(self._windows.count(limits, tokens, now), record,
                                                  self._quota_key(caller["project_id"], route, now), now, gateway)
        self._metrics.in_flight(record, +1)
        return {"caller": caller, "route": route, "reservation": reservation_id, "record": record}

    def _quota_key(self, project_id: str, route: Route, started: float) -> tuple[str, str] | None:
        """The free quota a call of `route` started at `started` draws on: its preset offer's claimed quota.
        A call admitted before the claim is not on it (the reload after the claim counts from the claim, and
        its settlement may come later)."""
        offer_id = route.get("offer")
        offer = self._routes.presets.get(offer_id) if offer_id else None
        grant = self._routes.grants.get((project_id, offer_id)) if offer_id else None
        if (offer is None or offer["service_type"] != "free" or not offer["preset"]
                or offer["preset"]["free_quota_tokens"] is None or grant is None or not grant["granted"]
                or started < grant["since"]):
            return None
        return project_id, offer_id

    @staticmethod
    def _record_base(caller: Caller, model: str, endpoint: EndpointRoute | None, route: Route | None) -> RecordBase:
        return {"project_id": caller["project_id"], "key_id": caller["key_id"], "model": model,
                "service_type": "endpoint" if endpoint else (route["service_type"] if route else ""),
                "service_id": route["service_id"] if route else "",
                "endpoint_id": endpoint["endpoint_id"] if endpoint else ""}

    # -- settlement ---------------------------------------------------------------------------------
    async def settle(self, reservation_id: str | None, record: UsageRecordDict) -> None:
        await self.settle_many([Settlement(reservation_id, record)])

    async def settle_many(self, settlements: list[Settlement]) -> int:
        """Reconcile reservations to the real usage and make the records durable (one transaction) before
        answering. Windows, free quota and metrics move once per request id, the first time it is seen, whether
        or not its row could be written then; the row is written (insert-or-ignore by request_id) on every send
        until one is acknowledged. So a database outage delays records and counts nothing twice when the
        gateways re-send them. Returns how many settlements were new."""
        await self._forget_stored(settlements)
        fresh, rows = 0, []
        for reservation_id, record in settlements:
            new = self._settle(reservation_id, record)
            fresh += new
            row = store.row(record)
            if is_refusal(reservation_id, row) and (self._refusals.folded(row["request_id"])
                                                    or (new and not self._refusals.take(row))):
                self._start_sweeper()  # it writes the folded counts
                continue
            rows.append(row)
        if rows:
            await self._durable(rows)
        return fresh

    async def _forget_stored(self, settlements: list[Settlement]) -> None:
        """After a restart this actor has forgotten which records it settled: a re-sent one whose row is already
        stored (its ack was lost with the old actor) is counted by the windows and quotas rebuilt from SQL, so
        it must not be counted again."""
        unknown = [record["request_id"] for reservation_id, record in settlements
                   if record["request_id"] not in self._settled and reservation_id is not None
                   and reservation_id not in self._reservations]
        if unknown:
            for request_id in await asyncio.to_thread(store.stored_ids, self._url, unknown):
                self._remember(request_id)

    def _remember(self, request_id: str) -> None:
        self._settled.add(request_id)
        self._settled_order.append(request_id)
        if len(self._settled_order) > SETTLED_MEMORY:
            self._settled.discard(self._settled_order.popleft())

    def _settle(self, reservation_id: str | None, record: UsageRecordDict) -> bool:
        if record["request_id"] in self._settled:
            return False
        self._remember(record["request_id"])
        tokens = record.get("prompt_tokens", 0) + record.get("completion_tokens", 0)
        held = self._reservations.pop(reservation_id, None) if reservation_id else None
        if reservation_id:
            self._witnessed.pop(reservation_id, None)
        quota_key = None
        if held is not None:
            self._windows.settle(held.windows, tokens)
            self._metrics.in_flight(held.record, -1)
            quota_key = held.quota_key
        elif reservation_id is not None:  # admitted before a restart: count it now so limits still hold
            endpoint, route = self._routes.resolve(record["project_id"], record["model"])
            if route is not None:
                self._windows.count(self._limits(record["project_id"], endpoint, route), tokens, record["ts"])
                quota_key = self._quota_key(record["project_id"], route, record["ts"])
        if quota_key is not None:
            self._free_used[quota_key] = self._free_used.get(quota_key, 0) + tokens
        self._metrics.observe(record)
        return True

    # -- calls whose gateway died (issue 11) ------------------------------------------------------------
    def heartbeat(self, gateway: str) -> None:
        """A gateway replica is alive (it says so every few seconds, and with every batch of admissions)."""
        self._gateways[gateway] = time.time()
        self._start_sweeper()

    async def witness_many(self, reports: list[WitnessReport]) -> None:
        """Engine replicas' counts of calls that ended on their side. Kept only while the call's reservation is
        held (the gateway has not settled it yet); the gateway's settlement drops it."""
        for report in reports:
            report = WitnessReport(*report)
            if report.reservation in self._reservations:
                self._witnessed[report.reservation] = report
                if (arrived := self._witness_waits.get(report.reservation)) is not None:
                    arrived.set()
        self._start_sweeper()

    async def witnessed(self, reservation_id: str, wait_s: float = 0.0) -> tuple[int, int] | None:
        """The engine's count of a call not settled yet (a gateway settling a broken stream asks for it), waiting
        up to `wait_s` (at most WITNESS_WAIT_MAX_S) for the engine's report while the call's reservation is held."""
        if reservation_id not in self._witnessed and wait_s > 0 and reservation_id in self._reservations:
            arrived = self._witness_waits.setdefault(reservation_id, asyncio.Event())
            try:
                await asyncio.wait_for(arrived.wait(), min(wait_s, WITNESS_WAIT_MAX_S))
            except TimeoutError:
                pass
            finally:
                self._witness_waits.pop(reservation_id, None)
        report = self._witnessed.get(reservation_id)
        return None if report is None else (report.prompt_tokens, report.completion_tokens)

    def _start_sweeper(self) -> None:
        if self._sweeper is None or self._sweeper.done():
            try:
                self._sweeper = asyncio.get_running_loop().create_task(self._sweep_loop())
            except RuntimeError:  # no event loop (a synchronous test): sweep() is called directly
                pass

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            try:
                await self.sweep(time.time())
            except Exception:  # noqa: BLE001  (the database is down: the settlements wait in _unswept)
                log.exception("settling the calls of stopped gateways failed; will retry")

    def _alive(self, gateway: str | None, now: float) -> bool:
        return gateway is None or now - self._gateways.get(gateway, 0.0) < GATEWAY_LEASE_S

    async def sweep(self, now: float) -> int:
        """Settle the calls of gateway replicas that died: with the engine's count when it reported one, with
        none after RESERVATION_LEASE_S when it never did (the engine died too). Returns how many were settled."""
        await self._flush_refusals(now)
        if self._shard == 0 and now - self._pruned_at > 3600:
            self._pruned_at = now
            await asyncio.to_thread(store.prune, self._url, now - self._retention_s)
        due: list[Settlement] = []
        for reservation_id in list(self._witnessed):
            held = self._reservations.get(reservation_id)
            if held is None:
                del self._witnessed[reservation_id]
            elif not self._alive(held.gateway, now):
                report = self._witnessed.pop(reservation_id)
                due.append(self._lost(reservation_id, held, report, now))
        for reservation_id, held in list(self._reservations.items()):
            if (reservation_id not in self._witnessed and now - held.admitted_at >= RESERVATION_LEASE_S
                    and not self._alive(held.gateway, now)):
                due.append(self._lost(reservation_id, held,
                                      WitnessReport(reservation_id, 0, 0, held.admitted_at, False), now))
        pending, self._unswept = self._unswept + due, []
        if not pending:
            return 0
        try:
            await self.settle_many(pending)
        except Exception:
            self._unswept = pending  # counted once already (by request id); the rows are written on the retry
            raise
        if due:
            log.warning("settled %d calls of stopped gateway replicas from the engines' counts", len(due))
        return len(due)

    @staticmethod
    def _lost(reservation_id: str, held: Held, report: WitnessReport, now: float) -> Settlement:
        return Settlement(reservation_id, held.record | {
            "request_id": reservation_id, "ts": report.started, "prompt_tokens": report.prompt_tokens,
            "completion_tokens": report.completion_tokens, "status_code": 502, "error_code": "MaaS.0502",
            "latency_ms": max(now - report.started, 0.0) * 1000, "ttft_ms": None, "tpot_ms": None, "client_ip": "",
            "stream": report.stream})

    # -- the engines' own counters, for `maas usage audit` (cluster.accounting.engine_audit) -----------------
    async def engine_totals(self, totals: EngineTotals) -> None:
        await self._engines.record(totals)

    def engine_deltas(self, since: float) -> dict[str, list[int]]:
        return self._engines.deltas(since)

    # -- SQL (cluster.accounting.store) ---------------------------------------------------------------
    def _write(self, rows: list[dict]) -> None:
        store.write_records(self._url, rows)

    async def _flush_refusals(self, now: float) -> None:
        rows = self._refusals.due(now)
        if not rows:
            return
        try:
            await asyncio.to_thread(store.add_folded, self._url, rows)
        except Exception:
            self._refusals.put_back(rows)
            raise

    # -- reads ----------------------------------------------------------------------------------------
    def list_models(self, key_hash: str) -> ModelList:
        caller = self._caller(key_hash)
        if caller is None:
            return {"error": "ModelArts.81003"}
        return {"caller": caller, "models": self._routes.visible(caller["project_id"])}

    def metrics_text(self, admin_key_hash: str | None = None) -> bytes | None:
        """The exposition, for the admin key (its hash) or None: the gateway already checked the metrics token."""
        if admin_key_hash is not None and not any(hmac.compare_digest(admin_key_hash, h) for h in self._admins):
            return None
        return self._metrics.exposition()

    def usage_in_window(self, window_key: str) -> int:
        return self._windows.used(window_key, time.time())


def get_or_create(database_url: str, shards: int = 1, retention_days: int = 180) -> list:
    """The platform's accounting shards (handles, shard 0 first), created where missing. Shards that run with
    another shard count (MAAS_ACCOUNTING_SHARDS changed while they lived) would route projects differently:
    refused with what to do."""
    # Shards take no CPU from Ray's accounting (num_cpus=0): SPREAD keeps them off one node where there are more.
    spread = {"scheduling_strategy": "SPREAD"} if shards > 1 else {}
    actors = [AccountingActor.options(name=shard_actor(i), namespace=NAMESPACE, lifetime="detached",
                                      get_if_exists=True, **spread).remote(database_url, i, shards, retention_days)
              for i in range(shards)]
    for shard, (created_as, of) in enumerate(ray.get([actor.layout.remote() for actor in actors])):
        if (created_as, of) != (shard, shards):
            raise RuntimeError(f"the accounting actor {shard_actor(shard)!r} runs as shard {created_as} of {of}, "
                               f"MAAS_ACCOUNTING_SHARDS is {shards}: run `maas down` first to change it")
    return actors
