"""My models (spec §6.1) without a platform: `register_version` and `resolve_version` on a database of their
own (a new model needs its base, versions are numbered, outputs are copied, the family must match the base),
and the checks of a LoRA adapter folder. (Through the platform's API and CLI: tests/e2e/test_my_models.py.)"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cluster.settings import get_settings
from cluster.state.db import migrate, session_scope
from serve_apps.errors import PlatformError
from tests.helpers import STRUCTURE_ERROR, lora_adapter

LLAMA = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 128}


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A MAAS_HOME with a stand-in tiny-chat base (its config.json is all the checks read) and a database."""
    monkeypatch.setenv("MAAS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MAAS_DATABASE_URL", f"sqlite:///{tmp_path / 'home' / 'maas.db'}")
    get_settings.cache_clear()
    base = tmp_path / "home" / "models" / "tiny-chat"
    base.mkdir(parents=True)
    (base / "config.json").write_text(json.dumps(LLAMA))
    migrate(get_settings().database_url)
    yield tmp_path
    get_settings.cache_clear()


def _full(folder: Path, config: dict | None = None) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config or LLAMA))
    (folder / "model.safetensors").write_bytes(b"\0" * 64)
    (folder / "tokenizer.json").write_text("{}")
    return folder


def test_register_and_resolve_versions(store):
    from cluster.my_models.registry import register_version, resolve_version

    url = get_settings().database_url
    jobs = store / "home" / "finetune"  # where fine-tuning jobs write their outputs: register_version's root
    with session_scope(url) as session:
        with pytest.raises(PlatformError) as unknown:  # a new model needs its base
            register_version(session, "default", "ft-model", _full(jobs / "out0"), "full", "finetune:job-0")
        assert unknown.value.body() == {"error_code": "MaaS.0404", "error_msg": "Model 'ft-model' does not exist."}
    with session_scope(url) as session:
        first = register_version(session, "default", "ft-model", _full(jobs / "out1"), "full", "finetune:job-1",
                                 base_model="tiny-chat", description="first run")
    with session_scope(url) as session:
        second = register_version(session, "default", first.model_id, lora_adapter(jobs / "out2"), "lora",
                                  "finetune:job-2")
    assert (first.version, first.kind, first.source) == (1, "full", "finetune:job-1")
    assert (second.version, second.kind, second.model_id) == (2, "lora", first.model_id)
    # The outputs were copied: the job's folders may go.
    shutil.rmtree(jobs / "out1")
    shutil.rmtree(jobs / "out2")
    my_dir = store / "home" / "models" / "my" / first.model_id
    assert first.path == str(my_dir / "v1") and (my_dir / "v1" / "model.safetensors").is_file()
    assert (my_dir / "v2" / "adapter_config.json").is_file()

    with session_scope(url) as session:
        latest = resolve_version(session, "default", "ft-model", None)
        v1 = resolve_version(session, "default", first.model_id, "1")
        assert resolve_version(session, "default", "ft-model", "v1").path == v1.path
        with pytest.raises(PlatformError) as missing:
            resolve_version(session, "default", "ft-model", "3")
        with pytest.raises(PlatformError) as elsewhere:
            resolve_version(session, "other", "ft-model", "1")
    assert (latest.version, latest.kind, latest.path) == (2, "lora", my_dir / "v2")
    assert latest.base_path == store / "home" / "models" / "tiny-chat"
    assert (v1.card.id, v1.card.source, v1.card.series, v1.base_model) == (
        "ft-model-v1", str(my_dir / "v1"), "maas-tiny", "tiny-chat")
    assert v1.card.is_chat and v1.card.context_length == 2048
    assert missing.value.message == "Version '3' of model 'ft-model' does not exist."
    assert elsewhere.value.message == "Model 'ft-model' does not exist."

    with session_scope(url) as session:
        with pytest.raises(PlatformError) as other_base:
            register_version(session, "default", "ft-model", _full(jobs / "out3"), "full", "finetune:job-3",
                             base_model="all-minilm-l6-v2")
        with pytest.raises(PlatformError) as wrong_family:
            register_version(session, "default", "ft-model", _full(jobs / "out4", LLAMA | {"model_type": "bert"}),
                             "full", "finetune:job-4")
        with pytest.raises(PlatformError) as not_an_adapter:
            register_version(session, "default", "ft-model", _full(jobs / "out5"), "lora", "finetune:job-5")
    assert other_base.value.message == "The model 'ft-model' is based on 'tiny-chat', not 'all-minilm-l6-v2'."
    assert wrong_family.value.body() == STRUCTURE_ERROR == not_an_adapter.value.body()
    assert sorted(p.name for p in my_dir.iterdir()) == ["v1", "v2"]  # refused folders were not kept


@pytest.mark.parametrize("changes", [{"r": 0}, {"r": "8"}, {"target_modules": []}, {"peft_type": None}])
def test_lora_adapter_needs_rank_and_targets(store, changes):
    from cluster.my_models.weights import check_weights
    from serve_apps.catalog import builtin

    with pytest.raises(PlatformError) as refused:
        check_weights(lora_adapter(store / "adapter", **changes), builtin("tiny-chat"))
    assert refused.value.body() == STRUCTURE_ERROR


def test_register_version_takes_only_the_jobs_outputs(store):
    from cluster.my_models.registry import register_version

    with session_scope(get_settings().database_url) as session:
        with pytest.raises(PlatformError) as refused:  # anything else is an import, under MAAS_IMPORT_ROOTS
            register_version(session, "default", "ft-model", _full(store / "elsewhere"), "full", "finetune:job-6",
                             base_model="tiny-chat")
    assert refused.value.spec.code == "MaaS.0403" and "MAAS_IMPORT_ROOTS" in refused.value.message


def _weights(folder: Path, kib: int) -> Path:
    _full(folder)
    (folder / "model.safetensors").write_bytes(b"\0" * (kib * 1024))
    return folder


def test_the_storage_quota_counts_every_version_also_job_outputs_and_parallel_imports(store, monkeypatch):
    """Before, a project could fill the platform's disk with model versions (no limit on bytes)."""
    from cluster.my_models.registry import add_version, create_model, register_version
    from cluster.my_models.schemas import ModelCreate, VersionCreate
    from cluster.projects import quotas
    from cluster.projects.schemas import QuotaSpec
    from cluster.state.db import ModelVersion
    from tests.helpers import race

    imports = store / "imports"
    monkeypatch.setenv("MAAS_IMPORT_ROOTS", str(imports))
    get_settings.cache_clear()
    url = get_settings().database_url
    with session_scope(url) as session:
        assert quotas.quotas(session, "default").model_disk_mb == 102_400  # MAAS_QUOTA_MODEL_DISK_MB's default
        quotas.set_quotas(session, "default", QuotaSpec(model_disk_mb=1))
    create_model("default", ModelCreate(name="big", base_model="tiny-chat", path=str(_weights(imports / "a", 600))))
    with pytest.raises(PlatformError) as refused:  # refused before anything is copied
        add_version("default", "big", VersionCreate(path=str(_weights(imports / "b", 600))))
    assert refused.value.status == 400 and refused.value.spec.code == "MaaS.0400"
    assert refused.value.message.startswith("Over the project's storage quota: at most 1 MiB of model weights")
    assert "(0.6 MiB in use, this version 0.6 MiB)" in refused.value.message
    jobs = store / "home" / "finetune"
    with session_scope(url) as session, pytest.raises(PlatformError, match="storage quota"):  # a job's output
        register_version(session, "default", "big", _weights(jobs / "out", 600), "full", "finetune:job-1")
    small = [_weights(imports / f"s{i}", 300) for i in range(4)]  # 600 + 300 fits, 600 + 2 x 300 does not
    outcomes = race(4, lambda i: add_version("default", "big", VersionCreate(path=str(small[i]))))
    assert sorted(outcomes) == ["MaaS.0400"] * 3 + ["ok"]
    with session_scope(url) as session:
        assert session.query(ModelVersion).count() == 2
    versions = sorted(p.name for p in (store / "home" / "models" / "my").glob("*/*"))
    assert versions == ["v1", "v2"]  # no staging copy left behind
