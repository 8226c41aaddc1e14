"""Compression jobs (spec §6.2) refused before any compute, on a database of their own and no Ray: what the
control plane checks of the source model and the strategy, and what it records of a completed job. The jobs
themselves, run by llmcompressor and served by vLLM: tests/e2e/test_compression.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from cluster.compression import service
from cluster.compression.schemas import CompressionCreate
from cluster.settings import get_settings
from cluster.state.db import CompressionJob, ModelVersion, MyModel, migrate, session_scope
from quantize.config import CompressConfig, Strategy, compressibility
from serve_apps.errors import PlatformError
from tests.helpers import lora_adapter

LLAMA = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 128,
         "intermediate_size": 384}


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("MAAS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MAAS_DATABASE_URL", f"sqlite:///{tmp_path / 'home' / 'maas.db'}")
    get_settings.cache_clear()
    base = tmp_path / "home" / "models" / "tiny-chat"
    base.mkdir(parents=True)
    (base / "config.json").write_text(json.dumps(LLAMA))
    migrate(get_settings().database_url)
    yield tmp_path
    get_settings.cache_clear()


def _version(session, tmp_path: Path, name: str, kind: str = "full", quantization: str | None = None,
             config: dict | None = None) -> None:
    folder = tmp_path / name
    if kind == "lora":
        lora_adapter(folder)
    else:
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps(config or LLAMA))
    model = MyModel(id=f"mdl-{name}", project_id="default", name=name, description="", base_model="tiny-chat")
    session.add(model)
    session.flush()  # the version's foreign key needs the model's row first
    session.add(ModelVersion(id=f"mv-{name}", model_id=model.id, version=1, path=str(folder), kind=kind,
                             source="upload", status="created", quantization=quantization))
    session.flush()


def _create(**fields) -> CompressionCreate:
    return CompressionCreate(**({"name": "c1", "model": "tiny-chat", "strategy": "awq-w4a16",
                                 "output_model": "tiny-awq"} | fields))


def _refusal(session, spec: CompressionCreate) -> str:
    with pytest.raises(PlatformError) as refused:
        service.create_job(session, "default", spec)
    assert refused.value.status == 400, refused.value.body()
    assert not session.query(CompressionJob).count()  # nothing was recorded, no Ray Job was submitted
    return refused.value.body()["error_msg"]


def test_form_rules_of_the_product():
    assert _create().migration_strength is None
    assert _create(strategy="smoothquant-w8a8", migration_strength=0.8).migration_strength == 0.8
    for bad in ({"migration_strength": 1.5, "strategy": "smoothquant-w8a8"},
                {"migration_strength": -0.1, "strategy": "smoothquant-w8a8"},
                {"migration_strength": 0.5},  # only for SmoothQuant-W8A8
                {"name": "1job"}, {"name": "a" * 65}, {"name": "bad name"}, {"name": ""},
                {"output_model": "x/y"}, {"output_model": "m" * 65}, {"description": "d" * 1001},
                {"strategy": "int3"}, {"num_samples": 0}, {"max_seq_len": 8}, {"unknown": 1}):
        with pytest.raises(ValidationError):
            _create(**bad)
    assert _create(name="压缩作业-1_a", output_model="模型.v2").name == "压缩作业-1_a"


def test_what_cannot_be_compressed_is_refused_with_the_reason(store):
    with session_scope(get_settings().database_url) as session:
        _version(session, store, "adapter", kind="lora")
        _version(session, store, "squeezed", quantization="awq-w4a16")
        _version(session, store, "odd", config=LLAMA | {"hidden_size": 96})
        _version(session, store, "bert", config={"architectures": ["BertModel"], "hidden_size": 384})
        assert "LoRA version cannot be compressed" in _refusal(session, _create(model="adapter"))
        assert "already compressed (awq-w4a16)" in _refusal(session, _create(model="squeezed"))
        assert "groups of 128" in _refusal(session, _create(model="odd"))
        assert "BertModel cannot be compressed" in _refusal(session, _create(model="bert"))
        assert "does not support compression" in _refusal(session, _create(model="all-minilm-l6-v2"))
        with pytest.raises(PlatformError) as unknown:
            service.create_job(session, "default", _create(model="no-such-model"))
        assert unknown.value.status == 404
        with pytest.raises(PlatformError) as not_ours:  # another project's model is not found, not refused
            service.create_job(session, "other", _create(model="odd"))
        assert not_ours.value.status == 404


def test_a_missing_compression_environment_is_a_clear_503(store, monkeypatch):
    monkeypatch.setenv("MAAS_COMPRESS_PYTHON", str(store / "nowhere" / "python"))
    get_settings.cache_clear()
    with session_scope(get_settings().database_url) as session:
        with pytest.raises(PlatformError) as missing:
            service.create_job(session, "default", _create())
    assert missing.value.status == 503 and "make install" in missing.value.body()["error_msg"]


def test_config_round_trip_and_compressibility():
    config = CompressConfig(name="j", strategy="awq-w4a16", base_model_path="/m", output_dir="/o")
    assert config.migration_strength == 0.5 and config.model_dir == Path("/o/model")
    with pytest.raises(ValidationError):
        CompressConfig(name="j", strategy="awq-w4a16", base_model_path="/m", output_dir="/o", migration_strength=0.9)
    assert compressibility(LLAMA, Strategy.SMOOTHQUANT_W8A8) is None
    assert compressibility(LLAMA | {"hidden_size": 100}, Strategy.SMOOTHQUANT_W8A8) is None  # int8: per channel
    assert "groups of 128" in compressibility(LLAMA | {"intermediate_size": 100}, Strategy.GPTQ_W4A16)
    assert "already compressed" in compressibility(LLAMA | {"quantization_config": {"quant_method": "awq"}},
                                                   Strategy.AWQ_W4A16)
