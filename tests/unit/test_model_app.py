"""The stream batcher of the model application, and where its engines (and a tuning job's workers) are placed."""

from __future__ import annotations

import asyncio
import time

import pytest

from serve_apps.model_app import FirstChunkBatcher


def test_first_chunks_leave_at_once_and_the_rest_in_batches():
    async def tokens():
        for i in range(12):
            await asyncio.sleep(0.004)
            yield i

    async def collect():
        start, batches = time.perf_counter(), []
        async for batch in FirstChunkBatcher(tokens(), interval_ms=20).stream():
            batches.append((time.perf_counter() - start, batch))
        return batches

    batches = asyncio.run(collect())
    assert [item for _, batch in batches for item in batch] == list(range(12))  # nothing lost or reordered
    assert batches[0][1] == [0] and batches[0][0] < 0.015  # the first chunk is not held back
    assert batches[1][1] == [1] and batches[1][0] < 0.025
    assert any(len(batch) > 1 for _, batch in batches[2:])  # later chunks travel together
    assert len(batches) < 12


# -- placement per node type ---------------------------------------------------------------------------------
def _spec(**fields):
    from serve_apps.catalog import builtin
    from serve_apps.model_app import ModelServiceSpec

    return ModelServiceSpec(model=builtin("tiny-chat"), model_path="/m", app_name="a", **fields)


def test_an_engine_without_a_node_type_is_placed_as_before():
    from serve_apps.model_app import _placement

    assert _placement(_spec()) == {"placement_group_config": {"bundles": [{"CPU": 1}]},
                                   "ray_actor_options": {"num_cpus": 0}}
    assert _placement(_spec(accelerator="cuda")) == {"ray_actor_options": {"num_cpus": 0}}
    assert _placement(_spec(accelerator="npu"))["placement_group_config"] == {"bundles": [{"CPU": 1, "NPU": 1}]}


def test_a_node_type_joins_every_bundle_of_the_engine():
    from serve_apps.model_app import _placement, build_llm_config

    assert _placement(_spec(node_type="maas-node-worker"))["placement_group_config"] == {
        "bundles": [{"CPU": 1, "maas-node-worker": 0.01}]}
    assert _placement(_spec(accelerator="npu", node_type="maas-npu"))["placement_group_config"] == {
        "bundles": [{"CPU": 1, "NPU": 1, "maas-npu": 0.01}]}
    assert _placement(_spec(accelerator="cuda", node_type="maas-gpu"))["placement_group_config"] == {
        "bundle_per_worker": {"GPU": 1, "maas-gpu": 0.01}}
    # What Serve is asked for: the replica actor (0 CPUs) shares the first bundle, so it lands there too.
    engine = build_llm_config(_spec(node_type="maas-node-worker")).get_engine_config()
    assert engine.placement_bundles == [{"CPU": 1, "maas-node-worker": 0.01}]


@pytest.mark.parametrize("bad", ["", "CPU", "GPU", "memory", "1gpu", "maas gpu", "node:127.0.0.1",
                                 "accelerator_type:A100", "x" * 65])
def test_a_node_type_must_name_a_custom_resource(bad):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="node_type"):
        _spec(node_type=bad)


def test_a_tuning_job_asks_its_node_type_for_each_worker():
    from train_jobs.config import FinetuneConfig

    base = dict(name="j", job_type="lora", base_model_path="/m", dataset_path="/d", output_dir="/o",
                global_batch_size=2, num_workers=2)
    assert FinetuneConfig(**base).worker_resources is None  # Ray Train's default, as before
    assert FinetuneConfig(**base, node_type="maas-cpu").worker_resources == {"CPU": 1, "maas-cpu": 0.01}
    assert FinetuneConfig(**base, node_type="maas-gpu", use_gpu=True).worker_resources == {"GPU": 1, "maas-gpu": 0.01}
    assert FinetuneConfig(**base, node_type="n", resources_per_worker={"CPU": 4}).worker_resources == {
        "CPU": 4, "n": 0.01}
    with pytest.raises(ValueError, match="node_type"):
        FinetuneConfig(**base, node_type="CPU")


def test_anthropic_messages_requests_take_the_calls_name_and_only_while_it_is_set():
    """vLLM's Messages serving makes a chat request of its own; ray_compat.name_messages_requests gives it the
    call's reservation (`chatcmpl-<it>` in vLLM), so an aborted Messages stream's counts find their call."""
    from types import SimpleNamespace

    from serve_apps.ray_compat import NAMED_MESSAGES, name_messages_requests

    class Serving:  # vLLM 0.32's AnthropicServingMessages, the part that is wrapped
        @classmethod
        def to_chat_completion_request(cls, request, **kwargs):
            return SimpleNamespace(request_id="chatcmpl-random", model=request)

    serving = Serving()
    name_messages_requests(serving)
    name_messages_requests(serving)  # once per serving object, however often asked
    assert serving.to_chat_completion_request("m").request_id == "chatcmpl-random"  # not set: vLLM's own
    token = NAMED_MESSAGES.set("a" * 32)
    try:
        assert serving.to_chat_completion_request("m", merge_inline_system=True).request_id == "a" * 32
    finally:
        NAMED_MESSAGES.reset(token)
    assert serving.to_chat_completion_request("m").request_id == "chatcmpl-random"
    assert Serving.to_chat_completion_request("m").request_id == "chatcmpl-random"  # the class is untouched


def test_a_cpu_engine_runs_its_worker_in_the_engine_core_process_unless_told_otherwise(monkeypatch):
    """benchmarks/engine_process.py: one process fewer per CPU engine. ray.serve.llm would set "mp" again
    (ray_compat.keep_cpu_uniproc_executor keeps "uni"), and vLLM's CPU platform too without the variable."""
    from ray.llm._internal.serve.engines.vllm.vllm_models import VLLMEngineConfig

    from serve_apps.catalog import builtin
    from serve_apps.model_app import ModelServiceSpec, build_llm_config
    from serve_apps.ray_compat import keep_cpu_uniproc_executor

    # the patch is process-wide: Ray's own method comes back after this test
    monkeypatch.setattr(VLLMEngineConfig, "get_initialization_kwargs", VLLMEngineConfig.get_initialization_kwargs)
    spec = ModelServiceSpec(model=builtin("tiny-chat"), app_name="x", model_path="/tmp/x", accelerator="cpu")
    config = build_llm_config(spec)
    assert config.engine_kwargs["distributed_executor_backend"] == "uni"
    assert config.runtime_env["env_vars"]["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    engine_config = config.get_engine_config()
    assert isinstance(engine_config, VLLMEngineConfig)
    assert engine_config.get_initialization_kwargs()["distributed_executor_backend"] == "mp"  # Ray's own rule
    keep_cpu_uniproc_executor()
    keep_cpu_uniproc_executor()  # idempotent
    assert engine_config.get_initialization_kwargs()["distributed_executor_backend"] == "uni"

    process = build_llm_config(spec.model_copy(update={"engine_kwargs": {"distributed_executor_backend": "mp"}}))
    assert "VLLM_ENABLE_V1_MULTIPROCESSING" not in process.runtime_env["env_vars"]
    assert process.get_engine_config().get_initialization_kwargs()["distributed_executor_backend"] == "mp"
