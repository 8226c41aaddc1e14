"""The gateway deployment: the OpenAI API at /v1 in front of every engine deployment.

Per request: the middleware checks the Authorization header's shape and the body size; the handler
parses the body strictly, asks the accounting actor (one round trip) who the caller is and which
deployment serves the model, then calls that deployment through a Serve handle, over Serve's gRPC (no
second HTTP hop, no Ray object per streamed item); a stream's batches after its first come over a
connection to the engine replica (serve_apps.direct_stream).
Streams always ask the engine for usage; the usage chunk is removed again for clients that did not ask.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any, AsyncIterator

import ray
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from ray import serve
from vllm.entrypoints.generate.base.protocol import StreamOptions

from serve_apps.catalog import CatalogModel, supports
from serve_apps.contract import Admission, AdmissionRequest, Route, bearer_token, hash_key
from serve_apps.direct_stream import DetouredStream
from serve_apps.errors import OpenAIError, PlatformError, context_length_exceeded, error_for
from serve_apps.gateway.admission import Call, Settler, client_ip, estimate_prompt_tokens, is_actor_error
from serve_apps.gateway.guard import GatewayGuard
from serve_apps.gateway.shards import AccountingShards
from serve_apps.gateway.protocol import (ChatRequest, CompletionRequest, EmbeddingRequest, MessagesRequest,
                                         RerankRequest, ResponsesRequest, choices, completion_budget, token_ids)
from serve_apps.gateway.streams import (NULL_FIELDS, RESPONSE_NULL_FIELDS, ChatShape, MessagesShape, ResponsesShape,
                                       StreamRelay)
from serve_apps.moderation import load_moderator, message_text, output_text, request_text
from serve_apps.ray_compat import (ErrorResponse, ScoreRequest, bind_serve_grpc_to_node_ip, over_grpc,
                                   sanitize_chat_request, until_assigned)
from serve_apps.settings import plane_settings
from serve_apps.tenancy import project_salt

log = logging.getLogger("maas.gateway")
# Settlements not yet acknowledged (the database or the actor is down) that one replica holds before it refuses
# new calls with 503: bounded memory, and never a call answered that could not be recorded.
MAX_PENDING_SETTLEMENTS = 10_000
SHUTDOWN_DRAIN_S = 15.0  # within Serve's graceful_shutdown_timeout_s (20 s)
BROKEN_COUNT_WAIT_S = 5.0  # a broken stream's settlement waits this long for the engine's final count
KNOWN_KEY_TTL_S, KNOWN_KEYS_KEPT = 30.0, 10_000

app = FastAPI(title="MaaS OpenAI-compatible API", docs_url=None, redoc_url=None, openapi_url=None)


def _json(status: int, body: dict) -> JSONResponse:
    return JSONResponse(status_code=status, content=body)


@dataclass(frozen=True)
class Routed:
    """An admitted call's route, with the parsed model card and the name the caller used."""

    route: Route
    card: CatalogModel
    called_as: str

    @property
    def lora(self) -> str | None:
        return self.route.get("lora")


app.add_middleware(GatewayGuard)


def _finish(request: Request, status: int, code: str) -> None:
    call = getattr(request.state, "call", None)
    if call is not None:
        request.app.state.gateway.settler.submit(call, status, code)


@app.get("/console", include_in_schema=False)
@app.get("/console/", include_in_schema=False)
async def console() -> RedirectResponse:
    """The web console lives in the control plane (Serve sends only /api there): /console is where `maas up`
    and the README send people."""
    return RedirectResponse("/api/console/", status_code=307)


@app.exception_handler(PlatformError)
async def _platform_error(request: Request, exc: PlatformError):
    _finish(request, exc.status, exc.spec.code)
    return _json(exc.status, exc.body())


@app.exception_handler(OpenAIError)
async def _openai_error(request: Request, exc: OpenAIError):
    _finish(request, exc.status, exc.type)
    return _json(exc.status, exc.body())


@app.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError):
    # Authentication comes first: a caller with a bad key learns nothing about the body rules.
    gateway: Gateway = request.app.state.gateway
    answer = await gateway.admit(request, None)
    request.state.call = Call(answer["record"], client_ip(request.headers, request.client))
    errors = [{k: v for k, v in err.items() if k != "url"} for err in exc.errors()]
    _finish(request, 400, "BadRequestError")
    return _json(400, OpenAIError(400, str(errors)).body())


SALTED = ("chat", "completions", "responses", "messages")


def _input_text(value) -> str:
    """The text of an embeddings/rerank input (strings only; token-id inputs have no text)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "\n".join(v for v in value if isinstance(v, str))
    return ""


def _rename_reasoning(message: dict) -> None:
    """vLLM calls it `reasoning`; the product (and most clients) read `reasoning_content`."""
    if "reasoning" in message:
        message["reasoning_content"] = message.pop("reasoning")


def _openai_shape(content: dict, fields: tuple[str, ...] = NULL_FIELDS) -> dict:
    """An answer without vLLM's own fields (null unless the caller asked for them)."""
    for part in (content, *content.get("choices", ())):
        for name in fields:
            if name in part and part[name] is None:
                del part[name]
    return content


def _model_renames(routed: Routed) -> dict[str, str]:
    """A LoRA version's stream names the model as its caller called it, not by the engine's adapter name."""
    return {f'"model":"{routed.lora}"': f'"model":{json.dumps(routed.called_as)}'} if routed.lora else {}


def _thinking_default(body, card: CatalogModel) -> None:
    """Thinking is off unless the caller asks (or the catalog says otherwise)."""
    if card.thinking_kwarg:
        kwargs = dict(body.chat_template_kwargs or {})
        kwargs.setdefault(card.thinking_kwarg, card.thinking_default)
        body.chat_template_kwargs = kwargs


async def _replica(generator, call: Call) -> None:
    """Wait for an engine replica to take the call: at once while one runs with room; a service scaled to zero
    starts its first one (Serve sees the queued call). Bounded by MAAS_COLD_START_TIMEOUT_S, then the
    platform's 503; the wait is the call's `replica_wait_ms` (and part of its TTFT)."""
    bound = plane_settings().cold_start_timeout_s
    started = time.perf_counter()
    try:
        await asyncio.wait_for(until_assigned(generator), bound)
    except TimeoutError:
        generator.cancel()  # out of Serve's queue: no replica runs it later for nobody
        raise PlatformError("MaaS.0503", reason=f"no instance of the model took the call within {bound:g} s "
                                                "(a service scaled to zero is starting its first instance, or "
                                                "every instance is busy); try again shortly") from None
    finally:
        call.replica_wait_ms = (time.perf_counter() - started) * 1000


async def _first(generator, call: Call):
    """The engine's first answer, once a replica took the call (`_replica`); its failure (a replica that died,
    an engine error) is the platform's 503, settled like every refusal (the reservation and the in-flight
    gauge are released)."""
    try:
        await _replica(generator, call)
        return await generator.__anext__()
    except (OpenAIError, PlatformError, asyncio.CancelledError):
        raise
    except Exception as exc:  # noqa: BLE001
        log.warning("the engine failed (%s: %s)", type(exc).__name__, exc)
        raise PlatformError("MaaS.0503", reason="the model's engine failed; try again") from None


@serve.deployment
@serve.ingress(app)
class Gateway:
    def __init__(self):
        bind_serve_grpc_to_node_ip()  # this replica's inter-deployment gRPC port on the node's IP only
        app.state.gateway = self
        self._handles: dict[tuple[str, str], Any] = {}
        self._cards: dict[str, CatalogModel] = {}
        self.moderator = load_moderator()
        # Who this replica is to the actor: if it dies, the engines' reports settle the calls it carried.
        self._id = ray.get_runtime_context().get_actor_id() or uuid.uuid4().hex
        self.accounting = AccountingShards(plane_settings().accounting_shards, self._id)
        self.settler = Settler(self.accounting.actor, self.accounting.settlement_shard)
        self._known_keys: dict[str, float] = {}  # key hash -> believed until (monotonic), for large bodies

    async def __del__(self):
        """Stopped on purpose (scale-in, upgrade, `maas down`): the pending settlements go out first."""
        left = await self.settler.drain(SHUTDOWN_DRAIN_S)
        if left:
            log.error("stopping with %d usage records not acknowledged by the accounting actor", left)

    # -- who is calling, may they, and what serves the model ----------------------------------------
    async def known_key(self, key_hash: str) -> bool:
        """Whether the accounting actor knows the key (asked before a large body is read; a key seen in the last
        KNOWN_KEY_TTL_S is believed: the admission that follows is the real check)."""
        now = time.monotonic()
        if self._known_keys.get(key_hash, 0.0) > now:
            return True
        answer = await self.admit_key(key_hash)
        if "caller" not in answer:
            return False
        if len(self._known_keys) >= KNOWN_KEYS_KEPT:
            self._known_keys.clear()
        self._known_keys[key_hash] = now + KNOWN_KEY_TTL_S
        return True

    async def admit_key(self, key_hash: str, model: str | None = None, prompt_tokens: int = 0,
                        max_tokens: int | None = None, choices: int = 1, playground: str = "") -> Admission:
        try:
            return await self.accounting.admit(AdmissionRequest(key_hash, model, prompt_tokens, max_tokens, choices,
                                                                playground))
        except Exception as exc:
            if not is_actor_error(exc):
                raise
            raise PlatformError("MaaS.0503", reason="the accounting service is restarting") from None

    async def admit(self, request: Request, model: str | None, prompt_tokens: int = 0,
                    max_tokens: int | None = None, choices: int = 1) -> Admission:
        if self.settler.pending >= MAX_PENDING_SETTLEMENTS:  # the ledger is unreachable: never answer unrecorded
            raise PlatformError("MaaS.0503", reason="usage cannot be recorded right now (the usage ledger is "
                                                    "unreachable); try again later")
        proof = request.headers.get("x-maas-playground", "")[:128]
        answer = await self.admit_key(request.state.key_hash, model, prompt_tokens, max_tokens, choices, proof)
        if answer.get("error") == "ModelArts.81003":
            raise PlatformError("ModelArts.81003")
        return answer

    def _card(self, route: Route) -> CatalogModel:
        key = f'{route["service_id"]}/{route["app_name"]}'  # an upgrade deploys a new app: a new card
        card = self._cards.get(key)
        if card is None:
            card = self._cards[key] = CatalogModel.model_validate(route["card"])
        return card

    def _handle(self, route: Route):
        key = (route["app_name"], route["deployment_name"])
        if key not in self._handles:
            handle = serve.get_deployment_handle(route["deployment_name"], route["app_name"])
            handle = handle.options(stream=True)  # every engine method answers a generator
            self._handles[key] = over_grpc(handle) if plane_settings().serve_grpc else handle
        return self._handles[key]

    async def _route(self, request: Request, body, kind: str, text: str = "") -> tuple[Routed, Call, Any]:
        """Admit the call (auth, access, limits, TPM reservation) and find the engine that answers it."""
        ids = token_ids(body)
        prompt_tokens = estimate_prompt_tokens(text) + ids
        answer = await self.admit(request, body.model, prompt_tokens, completion_budget(body), choices(body))
        route = answer.get("route")
        call = Call(answer["record"], client_ip(request.headers, request.client), answer.get("reservation"),
                    stream=bool(getattr(body, "stream", False)), playground=bool(answer.get("playground")))
        request.state.call = call
        if answer.get("error"):
            if answer.get("context_check") and kind in ("chat", "completions"):
                await self._refuse_over_context(route, body)
            if answer["error"] == "context_length":  # no engine to count the prompt: the estimate's answer
                params = answer["params"]
                raise context_length_exceeded(params["limit"], prompt_tokens, params["max_tokens"],
                                              "prompt" if kind == "completions" else "messages")
            raise error_for(answer["error"], model=body.model, **answer.get("params", {}))
        card = self._card(route)
        if not supports(card, kind):
            raise OpenAIError(400, f"The model `{body.model}` does not support /v1/{kind}.")
        if route["moderation"] and ids and getattr(self.moderator, "active", True):
            raise OpenAIError(400, "This model's input is moderated and token-id input cannot be read by the "
                                   "moderation: send the input as text.")
        if route["moderation"] and text and self.moderator.flagged(text):
            raise PlatformError("ModelArts.81011")
        body.model = route["engine_model"]
        if kind in SALTED:  # the caller's own salt is replaced: no project reads another's prefix cache
            body.cache_salt = project_salt(answer["record"]["project_id"])
        handle = self._handle(route)
        if route.get("lora"):  # an adapter on the base model's engine, loaded there from local storage
            handle = handle.options(multiplexed_model_id=route["lora"])
        return Routed(route, card, answer["record"]["model"]), call, handle

    async def _refuse_over_context(self, route: Route, body) -> None:
        """A call about to be refused on a limit whose prompt may not fit the context at all: the engine counts
        it, and one that cannot fit gets the product's 400 (what it would get with room in the limit)."""
        handle = self._handle(route)
        if route.get("lora"):
            handle = handle.options(multiplexed_model_id=route["lora"])
        counted = body.model_copy(update={"model": route["engine_model"]})
        if "chat_template_kwargs" in type(counted).model_fields:  # the prompt as it would be served
            _thinking_default(counted, self._card(route))
        try:
            error = await handle.context_error.remote(counted).__anext__()
        except Exception as exc:  # noqa: BLE001  (no engine to ask: the limit's refusal stands)
            log.warning("the context check failed (%s: %s)", type(exc).__name__, exc)
            return
        if isinstance(error, ErrorResponse):
            raise OpenAIError(error.error.code, error.error.message, error.error.type)

    # -- routes -------------------------------------------------------------------------------------
    @app.get("/v1/models")
    async def models(self, request: Request):
        answer = await self.accounting.list_models(request.state.key_hash)
        if answer.get("error"):
            raise PlatformError(answer["error"])
        data = [{"id": m["id"], "object": "model", "created": m["created"], "owned_by": m["owned_by"]}
                for m in answer["models"]]
        return {"object": "list", "data": sorted(data, key=lambda m: m["id"])}

    @app.get("/v1/models/{model_id:path}")
    async def model(self, model_id: str, request: Request):
        models = await self.models(request)
        for entry in models["data"]:
            if entry["id"] == model_id:
                return entry
        raise error_for("model_not_found", model=model_id)

    @app.get("/metrics")
    async def metrics(self, request: Request):
        """Prometheus metrics of every call: for the admin key or MAAS_METRICS_TOKEN only (they name every
        project, key id and endpoint)."""
        secret = bearer_token(request.headers.get("authorization", ""))
        if not secret:
            raise PlatformError("ModelArts.81002")
        token = plane_settings().metrics_token
        scraper = bool(token) and hmac.compare_digest(secret.encode(), token.encode())
        text = await self.accounting.metrics_text(None if scraper else hash_key(secret))
        if text is None:
            raise PlatformError("ModelArts.81003")
        return Response(text, media_type="text/plain; version=0.0.4")

    @app.post("/v1/chat/completions")
    async def chat(self, body: ChatRequest, request: Request):
        routed, call, handle = await self._route(request, body, "chat", request_text(body))
        _thinking_default(body, routed.card)
        return await self._generate(routed, call, handle, "chat", sanitize_chat_request(body))

    @app.post("/v1/completions")
    async def completions(self, body: CompletionRequest, request: Request):
        routed, call, handle = await self._route(request, body, "completions", request_text(body))
        return await self._generate(routed, call, handle, "completions", body)

    @app.post("/v1/responses")
    async def responses(self, body: ResponsesRequest, request: Request):
        routed, call, handle = await self._route(request, body, "responses", request_text(body))
        _thinking_default(body, routed.card)
        return await self._generate(routed, call, handle, "responses", body)

    @app.post("/v1/messages")
    async def messages(self, body: MessagesRequest, request: Request):
        routed, call, handle = await self._route(request, body, "messages", request_text(body))
        _thinking_default(body, routed.card)
        return await self._generate(routed, call, handle, "messages", body)

    async def _generate(self, routed: Routed, call: Call, handle, method: str, body) -> Response:
        if method in ("responses", "messages"):  # vLLM's own protocol models: validated again by the engine
            return await self._generate_api(routed, call, handle, method, body)
        client_wants_usage = bool(body.stream and body.stream_options and body.stream_options.include_usage)
        client_wants_running = bool(client_wants_usage and body.stream_options.continuous_usage_stats)
        if body.stream:  # usage always comes back from the engine, in every chunk: a broken stream is counted too
            body.stream_options = StreamOptions(include_usage=True, continuous_usage_stats=True)
        generator, batch = await self._engine_call(handle, method, body, call, bool(body.stream))
        head = batch[0]
        moderator = self.moderator if routed.route["moderation"] else None
        if not body.stream:
            content = _openai_shape(head.model_dump())
            call.usage(content.get("usage"))
            texts = []
            for choice in content.get("choices", []):
                if "message" in choice:
                    _rename_reasoning(choice["message"])
                    texts.append(message_text(choice["message"]))
                texts.append(choice.get("text") or "")
            if moderator is not None and moderator.flagged("\n".join(texts)):
                raise PlatformError("ModelArts.81011")
            if routed.lora:
                content["model"] = routed.called_as
            self.settler.submit(call, 200)
            return _json(200, content)
        shape = ChatShape(client_wants_usage, _model_renames(routed), client_wants_running)
        return self._streaming_response(StreamRelay(call, moderator, shape), call, batch, generator)

    async def _generate_api(self, routed: Routed, call: Call, handle, method: str, body) -> Response:
        """/v1/responses and /v1/messages: the engine answers a JSON dict, or a stream of SSE events."""
        generator, batch = await self._engine_call(handle, method, body.model_dump(mode="json", exclude_unset=True),
                                                   call, bool(body.stream))
        head = batch[0]
        moderator = self.moderator if routed.route["moderation"] else None
        if isinstance(head, dict):
            usage = head.get("usage") or {}
            call.prompt_tokens = usage.get("input_tokens", 0) or 0
            call.completion_tokens = usage.get("output_tokens", 0) or 0
            if moderator is not None and moderator.flagged(output_text(head.get("output") or head.get("content"))):
                raise PlatformError("ModelArts.81011")
            if routed.lora:
                head["model"] = routed.called_as
            self.settler.submit(call, 200)
            return _json(200, _openai_shape(head, RESPONSE_NULL_FIELDS))
        shape = (ResponsesShape if method == "responses" else MessagesShape)(_model_renames(routed))
        return self._streaming_response(StreamRelay(call, moderator, shape), call, batch, generator)

    @staticmethod
    async def _engine_call(handle, method: str, payload, call: Call, stream: bool) -> tuple[Any, list]:
        """Call the engine's `method`: (its Serve generator, its first batch). An engine's error answer raises.
        A stream's later batches come over a connection of their own (serve_apps.direct_stream)."""
        detour = stream and plane_settings().direct_streams
        generator = getattr(handle, method).remote(payload, reservation=call.reservation, detour=detour)
        first = await _first(generator, call)
        batch = first if isinstance(first, list) else [first]
        if isinstance(batch[0], ErrorResponse):
            raise OpenAIError(batch[0].error.code, batch[0].error.message, batch[0].error.type)
        return generator, batch

    def _streaming_response(self, relay: StreamRelay, call: Call, batch: list, generator) -> StreamingResponse:
        return StreamingResponse(self._stream(relay, call, batch, DetouredStream(generator)),
                                 media_type="text/event-stream")

    async def _stream(self, relay: StreamRelay, call: Call, first: list, rest) -> AsyncIterator[str]:
        """Relay the stream; whatever ends it, the call is settled once with the tokens the engine generated.
        The client goes away: the engine's request is cancelled (vLLM aborts it), 499. The engine fails: the
        client gets an error event and the stream's end instead of a dropped connection, 503."""
        status, code = 200, ""
        try:
            async for text in relay.run(first, rest):
                yield text
        except (asyncio.CancelledError, GeneratorExit):
            # Closed after the answer's end (its final usage seen; SDKs close at `[DONE]`, sometimes before the
            # engine's stream has ended here): a complete call, 200. Before it: the client went away, 499.
            if not call.usage_final and not call.cut:
                status, code = 499, "MaaS.0499"
            rest.cancel()
            raise
        except Exception as exc:  # noqa: BLE001  (any engine failure mid-stream)
            log.warning("the engine failed mid-stream (%s: %s)", type(exc).__name__, exc)
            status, code = 503, "MaaS.0503"
            yield relay.shape.failure(PlatformError("MaaS.0503", reason="the model's engine failed while "
                                                                        "answering; try again").message)
        finally:
            if status != 200 or not call.usage_final:
                relay.partial()
            if (status != 200 or call.cut) and call.reservation:  # the engine's final count, if it comes
                call.ended_at = time.perf_counter()  # its latency is the stream's, not the wait's
                self.settler.submit_after(self._engine_count(call), call, status, code)
            else:
                self.settler.submit(call, status, code)

    async def _engine_count(self, call: Call) -> None:
        """A broken stream's tokens as vLLM counted them at its abort (the engine replica reports them to the
        actor, serve_apps.witness): the last chunk relayed here may be a few tokens behind. Waits at most
        BROKEN_COUNT_WAIT_S; a dead engine never reports, and the relayed count stands."""
        try:
            counts = await self.accounting.witnessed(call.reservation, BROKEN_COUNT_WAIT_S)
        except Exception as exc:  # noqa: BLE001  (the actor restarting: the relayed count stands)
            log.warning("no engine count for a broken stream (%s)", type(exc).__name__)
            return
        if counts is not None:
            call.prompt_tokens = max(call.prompt_tokens, counts[0])
            call.completion_tokens = max(call.completion_tokens, counts[1])

    @app.post("/v1/embeddings")
    async def embeddings(self, body: EmbeddingRequest, request: Request):
        _route, call, handle = await self._route(request, body, "embeddings", _input_text(body.input))
        result = await _first(handle.embeddings.remote(body), call)
        if isinstance(result, ErrorResponse):
            raise OpenAIError(result.error.code, result.error.message, result.error.type)
        call.usage(result.usage)
        self.settler.submit(call, 200)
        return _json(200, result.model_dump())

    @app.post("/v1/rerank")
    async def rerank(self, body: RerankRequest, request: Request):
        name = body.model
        _route, call, handle = await self._route(request, body, "rerank", _input_text([body.query, *body.documents]))
        score = ScoreRequest(model=body.model, text_1=body.query, text_2=body.documents)
        result = await _first(handle.score.remote(score), call)
        if isinstance(result, ErrorResponse):
            raise OpenAIError(result.error.code, result.error.message, result.error.type)
        call.prompt_tokens = result.usage.total_tokens
        self.settler.submit(call, 200)
        ranked = sorted(result.data, key=lambda d: d.score, reverse=True)[: body.top_n or None]
        return {
            "id": f"rerank-{uuid.uuid4().hex}",
            "model": name,
            "created": int(time.time()),
            "usage": {"total_tokens": result.usage.total_tokens},
            "results": [{"index": d.index, "relevance_score": d.score,
                         **({"document": {"text": body.documents[d.index]}} if body.return_documents else {})}
                        for d in ranked],
        }


def build_app(args: dict | None = None) -> serve.Application:
    """`serve deploy` entry point of the gateway application."""
    args = args or {}
    return Gateway.options(
        num_replicas=args.get("replicas", 1),
        ray_actor_options={"num_cpus": 0},
        max_ongoing_requests=args.get("max_ongoing_requests", 1000),
    ).bind()
