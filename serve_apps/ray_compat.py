"""Every private Ray API the platform uses, in one place, each with the Ray version it was checked against.

Ray gives no stability promise for these names; when Ray is upgraded, this file is the one to re-check
(`make test` exercises every entry). Both planes import from here: `cluster` may import `serve_apps`,
never the other way round, so this module lives on the data-plane side.
"""

from __future__ import annotations

import contextvars
import importlib
from typing import Any

# -- ray.llm internals (checked against ray 2.60.0) -------------------------------------------------------
# Imported on first use (PEP 562): importing them imports vLLM, torch and transformers (~13 s of CPU), which the
# control plane's replica and `maas` commands need only once they build a model service.
_LAZY = {
    # The OpenAI protocol models ray.serve.llm's LLMServer speaks (re-exports of vLLM's, with Ray's fixes).
    **dict.fromkeys(("ChatCompletionRequest", "CompletionRequest", "EmbeddingCompletionRequest", "ErrorInfo",
                     "ErrorResponse", "ScoreRequest", "TokenizeChatRequest", "TokenizeCompletionRequest"),
                    "ray.llm._internal.serve.core.configs.openai_api_models"),
    # LLMServer's callback hook (we skip its per-node download task), its stream batcher (we send the first
    # chunk at once), its LoRA loader and the config it returns (we load adapters from local disk).
    "CallbackBase": "ray.llm._internal.common.callbacks.base",
    "DiskMultiplexConfig": "ray.llm._internal.serve.core.configs.llm_config",
    "Batcher": "ray.llm._internal.serve.utils.batcher",
    "LoraModelLoader": "ray.llm._internal.serve.utils.lora_serve_utils",
    # What ray.serve.llm's own ingress does to a chat body before the engine sees it (tool-call ids etc.).
    "sanitize_chat_request": "ray.llm._internal.serve.core.ingress.utils:_sanitize_chat_completion_request",
}


def __getattr__(name: str) -> Any:
    path = _LAZY.get(name)
    if path is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, _, attribute = path.partition(":")
    value = getattr(importlib.import_module(module), attribute or name)
    globals()[name] = value  # once
    return value


# Private methods of `ray.serve.llm.LLMServer` that `serve_apps.model_app.MaasLLMServer` overrides or calls
# (checked against ray 2.60.0): `_init_multiplex_loader` (local LoRA loader), `_batch_output_stream` and
# `_get_batch_interval_ms` (first chunk at once), `_llm_config` (the context length), `engine` (below).


def keep_cpu_uniproc_executor() -> None:
    """ray.serve.llm (checked against ray 2.60.0, `VLLMEngineConfig.get_initialization_kwargs`) sets
    distributed_executor_backend="mp" for every CPU engine, whatever engine_kwargs say: the engine core process
    then starts a worker process of its own. A CPU engine that asks for "uni" (the worker inside the engine core
    process, serve_apps.model_app) keeps it. Idempotent; call it in the replica before the engine starts."""
    from ray.llm._internal.serve.engines.vllm.vllm_models import VLLMEngineConfig

    original = VLLMEngineConfig.get_initialization_kwargs
    if getattr(original, "maas_keeps_uni", False):
        return

    def get_initialization_kwargs(self) -> dict:
        kwargs = original(self)
        if self.engine_kwargs.get("distributed_executor_backend") == "uni" and kwargs.get(
                "distributed_executor_backend") == "mp":
            kwargs["distributed_executor_backend"] = "uni"
        return kwargs

    get_initialization_kwargs.maas_keeps_uni = True
    VLLMEngineConfig.get_initialization_kwargs = get_initialization_kwargs


def patch_tokenizer_service(engine) -> None:
    """ray 2.60 looks for vLLM 0.32's tokenizer service under an older attribute name: point it there."""
    if getattr(engine, "_oai_serving_tokenization", False) is None:
        engine._oai_serving_tokenization = getattr(engine._app_state, "serving_tokenization", None)


def vllm_serving(engine, name: str):
    """One of vLLM's serving objects that ray.serve.llm's engine builds but does not expose (ray 2.60 keeps
    vLLM's app state in `VLLMEngine._app_state`): `openai_serving_responses`, `anthropic_serving_messages`."""
    serving = getattr(getattr(engine, "_app_state", None), name, None)
    if serving is None:
        raise NotImplementedError(f"this engine has no {name}")
    return serving


NAMED_MESSAGES = contextvars.ContextVar("maas_messages_request_id", default=None)


def name_messages_requests(serving) -> None:
    """vLLM's Anthropic Messages serving turns each request into a chat request with an id of its own making;
    this has it take NAMED_MESSAGES's value instead, when set (the call's reservation: `chatcmpl-<it>`, as the
    chat route names its requests). Checked on vLLM 0.32 (`AnthropicServingMessages.to_chat_completion_request`,
    a classmethod, called once per request in `create_messages`)."""
    convert = serving.to_chat_completion_request
    if getattr(convert, "maas_named", False):
        return

    def named(*args, **kwargs):
        request = convert(*args, **kwargs)
        if (request_id := NAMED_MESSAGES.get()) is not None:
            request.request_id = request_id
        return request

    named.maas_named = True
    serving.to_chat_completion_request = named


class _SchedulerStatsSink:
    """A vLLM stat logger that hands each step's scheduler stats to `on_stats(waiting, running, kv_usage)`."""

    def __init__(self, on_stats, on_tokens=None) -> None:
        self.on_stats, self.on_tokens = on_stats, on_tokens

    def record(self, scheduler_stats=None, iteration_stats=None, mm_cache_stats=None, engine_idx=0) -> None:
        if scheduler_stats is not None:
            self.on_stats(scheduler_stats.num_waiting_reqs + scheduler_stats.num_skipped_waiting_reqs,
                          scheduler_stats.num_running_reqs, scheduler_stats.kv_cache_usage)
        if iteration_stats is not None and self.on_tokens is not None:
            self.on_tokens(iteration_stats.num_prompt_tokens, iteration_stats.num_generation_tokens)

    def log(self) -> None: ...

    def log_engine_initialized(self) -> None: ...

    def record_sleep_state(self, *args, **kwargs) -> None: ...

    def record_admission_rejection(self, *args, **kwargs) -> None: ...


def watch_scheduler_stats(engine, on_stats, on_tokens=None) -> bool:
    """Call `on_stats(waiting, running, kv_usage)` on every step of the engine behind a `LLMServer.engine`
    (ray's `VLLMEngine._engine_client` is vLLM 0.32's `AsyncLLM`; its `logger_manager.stat_loggers` get
    `SchedulerStats` per step; AsyncLLM has no public add_logger, vllm issue 17702), and
    `on_tokens(prompt, generation)` with each step's token counts: the numbers vLLM adds to its
    `vllm:prompt_tokens_total` and `vllm:generation_tokens_total` counters. False if not found."""
    manager = getattr(getattr(engine, "_engine_client", None), "logger_manager", None)
    if manager is None:
        return False
    manager.stat_loggers.append(_SchedulerStatsSink(on_stats, on_tokens))
    return True


def watch_aborts(engine, on_abort) -> bool:
    """Call `on_abort(external_request_id, prompt_tokens, generation_tokens)` for each request aborted in the
    engine behind a `LLMServer.engine` (a client gone, a cancelled stream), with the counts vLLM's
    `vllm:prompt_tokens_total` / `vllm:generation_tokens_total` hold for it at that moment: vLLM 0.32's
    `AsyncLLM.abort` -> `OutputProcessor.abort_requests` drops the request's state (later outputs of the engine
    core are ignored, and not counted), so these are its final counts. The tokens of its last outputs may
    never have reached the stream (they wait in its output queue). False if not found."""
    processor = getattr(getattr(engine, "_engine_client", None), "output_processor", None)
    original = getattr(processor, "abort_requests", None)
    if original is None or not hasattr(processor, "request_states"):
        return False

    def abort_requests(request_ids, internal: bool, *args, **kwargs):
        request_ids = list(request_ids)
        for request_id in request_ids:
            ids = [request_id] if internal else list(getattr(processor, "external_req_ids", {}).get(request_id, []))
            for state in filter(None, map(processor.request_states.get, ids)):
                stats = getattr(state, "stats", None)
                if stats is not None:
                    try:
                        on_abort(state.external_req_id, state.prompt_len or 0, stats.num_generation_tokens)
                    except Exception:  # noqa: BLE001  (never break vLLM's abort)
                        pass
        return original(request_ids, internal, *args, **kwargs)

    processor.abort_requests = abort_requests
    return True


# -- ray.serve internals (checked against ray 2.60.0) -----------------------------------------------------
def serve_details() -> dict[str, Any] | None:
    """`ServeInstanceDetails` as a dict (one controller call), or None when no Serve controller runs.
    Public `serve.status()` lacks the deployment configs and replica ids the reconciler reads."""
    from ray.serve.context import _get_global_client

    client = _get_global_client(raise_if_no_controller_running=False)
    return None if client is None else client.get_serve_details()


async def until_assigned(response) -> None:
    """Wait until Serve's router has handed a handle call to a replica (a `DeploymentResponseGenerator`'s
    `_fetch_future_result_async`); the public methods only wait for the first result, which includes the
    engine's work. Cancelling the wait cancels the assignment (the call leaves Serve's queue)."""
    await response._fetch_future_result_async()


def over_grpc(handle):
    """A handle whose calls go over Serve's inter-deployment gRPC server of the replica, not as Ray actor calls
    (`_by_reference=False`: arguments and every streamed item are serialized onto the gRPC stream; the router,
    the replica's ongoing-request count, rejection and cancellation are the same)."""
    return handle.options(_by_reference=False)


def bind_serve_grpc_to_node_ip() -> None:
    """Serve's replica starts its inter-deployment gRPC server on every interface, `[::]:0`
    (ray/serve/_private/replica.py:1835, `Replica._on_initialized`; no setting changes it), though the handles that
    call it dial the replica's node IP (`ray.util.get_node_ip_address()`, replica.py:3477, as ReplicaInfo.node_ip;
    request_router/replica_wrapper.py:292). In this process it starts on that IP alone. The server runs whatever a
    caller sends (a pickled request, replica.py:278) and checks only Ray's token (RAY_AUTH_MODE=token) or TLS
    (RAY_USE_TLS): keep its port inside the cluster. Idempotent; call it in a deployment's constructor (Serve
    starts the server after it)."""
    import ray
    from ray.serve._private import replica

    original = replica.add_port_to_grpc_server
    if getattr(original, "maas_node_ip", False):
        return

    def add_port_to_grpc_server(server, address: str):
        if address.startswith("[::]:"):
            ip = ray.util.get_node_ip_address()
            address = f"{f'[{ip}]' if ':' in ip else ip}:{address.rpartition(':')[2]}"
        return original(server, address)

    add_port_to_grpc_server.maas_node_ip = True
    replica.add_port_to_grpc_server = add_port_to_grpc_server


def pin_code_version(application, version: str):
    """Give an application's ingress deployment a fixed code version: Serve restarts every replica when the
    version changes, and an imperative deploy without one gets a random version on each call."""
    application._bound_deployment = application._bound_deployment.options(version=version, _internal=True)
    return application


def delete_app_nowait(name: str) -> None:
    """`serve.delete` without waiting for the application to go (the reconciler's loop must not block)."""
    from ray import serve

    serve.delete(name, _blocking=False)


# -- ray core internals (checked against ray 2.60.0) ------------------------------------------------------
def import_attr(path: str):
    """`module.sub:attr` or `module.sub.attr` -> the object, as `serve deploy` resolves an import_path."""
    from ray._common.utils import import_attr as _import_attr

    return _import_attr(path)


def dashboard_address() -> str:
    """host:port of this cluster's dashboard (the Jobs API), read from the GCS: works inside any worker,
    whatever address the cluster was started with."""
    from ray._private import ray_constants
    from ray.experimental.internal_kv import _internal_kv_get

    address = _internal_kv_get(ray_constants.DASHBOARD_ADDRESS, namespace=ray_constants.KV_NAMESPACE_DASHBOARD)
    return address.decode()
