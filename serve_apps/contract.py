"""What the gateway and the accounting actor exchange, typed: the actor's name, how a key is hashed, the
admission request and answer, a route (what a model name means), a usage record and its settlement.

Plain dicts and tuples at run time (TypedDict, NamedTuple): they cross a Ray call on every request, and
cost nothing to build or pickle beyond the data itself. The actor lives in `cluster.accounting`; the
gateway finds it by name and speaks only these types and the methods listed in `ActorMethods`.
"""

from __future__ import annotations

import hashlib
import uuid
import zlib
from typing import Any, NamedTuple, NotRequired, Protocol, TypedDict

ACCOUNTING_ACTOR = "maas-accounting"  # named, detached, in NAMESPACE
NAMESPACE = "maas"  # Ray namespace of the platform's named actors


def shard_actor(shard: int) -> str:
    """The name of accounting shard `shard` (MAAS_ACCOUNTING_SHARDS): shard 0 keeps the single actor's name."""
    return ACCOUNTING_ACTOR if shard == 0 else f"{ACCOUNTING_ACTOR}-{shard}"


def project_shard(project_id: str, shards: int) -> int:
    """The shard that admits and settles a project's calls. Every limit is per project, so each stays exact in
    its shard; CRC-32 is the same in every process (Python's hash() of a str is not)."""
    return zlib.crc32(project_id.encode()) % shards if shards > 1 else 0


def new_reservation(shard: int) -> str:
    """A reservation id that names its shard (`s<shard>-<hex>`; shard 0: the plain hex of one actor), so that
    settlements and the engines' reports find the shard holding it."""
    return uuid.uuid4().hex if shard == 0 else f"s{shard}-{uuid.uuid4().hex}"


def reservation_shard(reservation: str) -> int:
    return int(reservation[1:reservation.index("-")]) if reservation.startswith("s") else 0


def hash_key(secret: str) -> str:
    """The only form a key is stored, looked up or sent in: SHA-256, hex."""
    return hashlib.sha256(secret.encode()).hexdigest()


def bearer_token(authorization: str) -> str:
    """The secret of an `Authorization: Bearer <secret>` header; "" when the header has another shape."""
    return authorization[7:].strip() if authorization.startswith("Bearer ") else ""


class Caller(TypedDict):
    key_id: str
    project_id: str


class PresetLimits(TypedDict):
    """How a preset is offered: free until `expires_at`, or up to a claimable quota; model-level limits."""

    expires_at: int | None
    free_quota_tokens: int | None
    rpm: int
    tpm: int


class Route(TypedDict):
    """What answers a model name: a preset, a project's service, or a LoRA version on its base's engine."""

    kind: str  # preset | service | lora
    name: str  # the name callers use
    service_type: str  # free | commercial | service (usage records' service_type)
    service_id: str
    app_name: str  # the Serve application and deployment that answer
    deployment_name: str
    engine_model: str  # the model id the engine knows (a LoRA: the adapter's directory)
    card: dict[str, Any]  # the serve_apps.catalog.CatalogModel, as JSON
    moderation: bool
    qps: int | None
    status: str
    created: int
    owned_by: str
    preset: PresetLimits | None
    offer: NotRequired[str]  # the preset whose offer governs the call (access, model limits, free quota)
    project_id: NotRequired[str]  # services and LoRA versions belong to a project
    lora: NotRequired[str]  # a LoRA version: the adapter directory, multiplexed on the base's engine


class EndpointRoute(TypedDict):
    """A custom endpoint: a project's own name, with its own limits, in front of a route."""

    name: str
    endpoint_id: str
    target: str  # a service id or a preset model id
    rpm: int
    tpm: int
    enabled: bool
    created: int


class RecordBase(TypedDict):
    """Who called what: the part of a usage record the actor fills in at admission."""

    project_id: str
    key_id: str
    model: str  # the name the caller used
    service_type: str
    service_id: str
    endpoint_id: str


class UsageRecord(RecordBase):
    """One call, as it becomes a row of usage_records; `request_id` makes a re-sent record count once."""

    request_id: str
    ts: float
    prompt_tokens: int
    completion_tokens: int
    status_code: int
    error_code: str
    latency_ms: float
    ttft_ms: float | None
    tpot_ms: float | None
    client_ip: str
    stream: bool
    playground: NotRequired[bool]  # a console playground call: recorded, left out of call statistics
    replica_wait_ms: NotRequired[float | None]  # until an engine replica took the call (cold start); None: none asked


class AdmissionRequest(NamedTuple):
    key_hash: str
    model: str | None  # None: only authenticate (a body that failed validation)
    prompt_tokens: int = 0  # estimated; the engine's count replaces it at settlement
    max_tokens: int | None = None  # None: the rest of the context is reserved against TPM; else all choices'
    choices: int = 1  # max_tokens is this many choices' budget: each alone must fit the context
    playground: str = ""  # the console's proof that it marks the call as a playground call (X-MaaS-Playground)


class Admission(TypedDict, total=False):
    """The actor's answer. `error` is a code of serve_apps.errors (`error_for` renders it); a known caller
    always gets `record`, so even a refused call is recorded."""

    caller: Caller
    record: RecordBase
    route: Route
    reservation: str  # what settle_many releases
    error: str
    params: dict[str, Any]
    context_check: bool  # with a limit's error: the call may not fit the context, the engine counts it first
    playground: bool  # the call carries the console's valid playground proof
    shard: int  # alone: the caller's project is that shard's; ask it (nothing was admitted or refused here)


class ModelList(TypedDict, total=False):
    caller: Caller
    models: list[dict[str, Any]]  # id, created, owned_by
    error: str


class Settlement(NamedTuple):
    reservation: str | None  # None: the call was never admitted (refused, or only authenticated)
    record: UsageRecord


def settlement_shard(settlement: Settlement, shards: int) -> int:
    """Where a settlement goes: the shard of its reservation, else (a refused call) its project's shard."""
    if settlement.reservation:
        return reservation_shard(settlement.reservation)
    return project_shard(settlement.record["project_id"], shards)


class WitnessReport(NamedTuple):
    """An engine replica's count of one admitted call (serve_apps.witness): what the actor settles the call
    with if the gateway that carried it never does."""

    reservation: str
    prompt_tokens: int
    completion_tokens: int
    started: float  # when the engine took the call (epoch seconds)
    stream: bool


class EngineTotals(NamedTuple):
    """One engine replica's token counters since it started (what vLLM's vllm:prompt_tokens_total and
    vllm:generation_tokens_total count), pushed to the actor every few seconds: `maas usage audit` compares
    them with the ledger."""

    replica: str
    app_name: str
    prompt_tokens: int
    generation_tokens: int
    at: float


class ActorMethods(Protocol):
    """The accounting actor's methods the gateway and the engines call (through `.remote`); the actor implements
    each with this signature (tests/db/test_actor_contract.py checks it)."""

    async def admit_many(self, requests: list[AdmissionRequest], gateway: str | None = None) -> list[Admission]: ...

    def heartbeat(self, gateway: str) -> None: ...  # a gateway replica is alive

    async def witnessed(self, reservation_id: str, wait_s: float = 0.0) -> tuple[int, int] | None: ...

    async def settle_many(self, settlements: list[Settlement]) -> int: ...

    async def witness_many(self, reports: list[WitnessReport]) -> None: ...  # from engine replicas

    async def engine_totals(self, totals: EngineTotals) -> None: ...  # from engine replicas

    def list_models(self, key_hash: str) -> ModelList: ...

    def metrics_text(self, admin_key_hash: str | None) -> bytes | None: ...  # None: not the admin key
