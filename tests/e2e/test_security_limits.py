"""A hostile project's key against the running platform, part 2: a LoRA of a preset model is held to the
preset's offer (access rules, RPM/TPM, free quota), count and storage limits hold under parallel creates, a
deleted key is refused on the very next call while the accounting actor reloads, a prompt that cannot fit the
context gets the product's 400 before any limit's 429, and a record with a NUL byte neither fails nor blocks
the others. Black-box: HTTP and the official openai client with the tenants' own keys; the admin key only
sets what an admin sets (offers, quotas).

The tiny-chat preset's offer is global: each test that changes it puts back the default offer."""

from __future__ import annotations

import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from tests.helpers import lora_adapter, wait_for

pytestmark = pytest.mark.e2e
CHAT = "tiny-chat"
EMBED = "all-minilm-l6-v2"
LORA = "evil-lora"


def _tenant(platform, project: str) -> tuple[str, httpx.Client]:
    with platform.admin() as admin:
        assert admin.post("/projects", json={"id": project}).status_code in (201, 409)
        key = admin.post(f"/{project}/keys", json={"label": "first", "description": "x"}).json()["key"]
    return key, httpx.Client(base_url=f"{platform.base_url}/api/v1/{project}", timeout=120,
                             headers={"Authorization": f"Bearer {key}"})


def _peft_adapter(base: Path, folder: Path) -> Path:
    """A real LoRA adapter of tiny-chat, as peft saves it (random A, zero B: it answers as the base does)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    model.save_pretrained(folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps(config | {"base_model_name_or_path": CHAT}))
    return folder


def _refused(call) -> tuple[int, str]:
    with pytest.raises(openai.APIStatusError) as refused:
        call()
    body = refused.value.response.json()
    return refused.value.status_code, body.get("error_code") or body.get("message", "")


@pytest.fixture(scope="module")
def lora_tenant(platform, tmp_path_factory):
    """A fresh project with a LoRA version of tiny-chat imported through the API, its key and openai client."""
    key, rest = _tenant(platform, "evil-lora")
    adapter = _peft_adapter(platform.home / "models" / CHAT, tmp_path_factory.mktemp("lora") / "adapter")
    created = rest.post("/my-models", json={"name": LORA, "base_model": CHAT, "path": str(adapter)})
    assert created.status_code == 201, created.text
    assert created.json()["versions"][0]["kind"] == "lora"
    yield platform.client(key), rest
    with platform.admin() as admin:
        admin.put(f"/presets/{CHAT}", json={"kind": "free"})


def _chat(client: openai.OpenAI, model: str, content: str = "hello", max_tokens: int = 4):
    return client.chat.completions.create(model=model, max_tokens=max_tokens,
                                          messages=[{"role": "user", "content": content}])


def test_a_lora_of_a_preset_is_held_to_the_presets_offer(platform, lora_tenant):
    """Before: the LoRA answered on the preset's engine without the preset's access rules (81004, 81014,
    81006), without its RPM/TPM, and its tokens never counted against the free quota."""
    client, rest = lora_tenant
    assert _chat(client, LORA).usage.total_tokens > 0  # the adapter answers on tiny-chat's engine
    with platform.admin() as admin:
        assert admin.put(f"/presets/{CHAT}", json={"kind": "commercial"}).status_code == 200
        for model in (LORA, f"{LORA}-v1", CHAT):  # not activated by this project
            assert _refused(lambda m=model: _chat(client, m)) == (401, "ModelArts.81004"), model
        assert admin.put(f"/presets/{CHAT}", json={"kind": "free", "expires_at": int(time.time()) - 1}).is_success
        assert _refused(lambda: _chat(client, LORA)) == (403, "ModelArts.81014")
        # Model-level RPM: the LoRA and the preset share one window (60 s: this test's calls above count).
        assert admin.put(f"/presets/{CHAT}", json={"kind": "free", "rpm": 2}).is_success
        _chat(client, CHAT)
        assert _refused(lambda: _chat(client, LORA)) == (429, "ModelArts.81101")
        assert _refused(lambda: _chat(client, CHAT)) == (429, "ModelArts.81101")
        assert admin.put(f"/presets/{CHAT}", json={"kind": "free", "tpm": 100}).is_success
        assert _refused(lambda: _chat(client, LORA, max_tokens=200)) == (429, "ModelArts.81103")
        # The free quota: claimed by the project, used up by the LoRA's tokens, for the preset too.
        assert admin.put(f"/presets/{CHAT}", json={"kind": "free", "free_quota_tokens": 5}).is_success
        assert _refused(lambda: _chat(client, LORA)) == (401, "ModelArts.81004")  # not claimed yet
        assert rest.post(f"/presets/{CHAT}/claim").status_code == 200
        _chat(client, LORA)
        deadline = time.time() + 30  # the settlement reaches the actor just after the answer
        while (answer := _refused_or_none(client, LORA)) is None:
            assert time.time() < deadline
            time.sleep(0.3)
        assert answer == (401, "ModelArts.81005")
        assert _refused(lambda: _chat(client, CHAT)) == (401, "ModelArts.81005")
        assert admin.put(f"/presets/{CHAT}", json={"kind": "free"}).is_success
        assert admin.post(f"/presets/{CHAT}/freeze", json={"project_id": "evil-lora"}).status_code == 200
        try:
            assert _refused(lambda: _chat(client, LORA)) == (401, "ModelArts.81006")
        finally:
            admin.post(f"/presets/{CHAT}/freeze", json={"project_id": "evil-lora", "frozen": False})
    assert _chat(client, LORA).usage.total_tokens > 0


def _refused_or_none(client, model: str):
    try:
        _chat(client, model)
    except openai.APIStatusError as refused:
        return refused.status_code, refused.response.json().get("error_code")
    return None


def test_a_prompt_that_cannot_fit_the_context_gets_the_400_before_the_tpm_429(platform, lora_tenant):
    """Before: a prompt whose estimate was over the context met the TPM check first and was answered 429
    ModelArts.81103, where the product (and this platform with room in the limit) answers 400."""
    client, _rest = lora_tenant
    too_long = " ".join(os.urandom(4).hex() for _ in range(950))  # 8,549 bytes of hex: > 2,048 tokens
    with platform.admin() as admin:
        assert admin.put(f"/presets/{CHAT}", json={"kind": "free", "tpm": 100}).is_success
        try:
            for model in (CHAT, LORA):
                for max_tokens in (None, 16):
                    with pytest.raises(openai.BadRequestError) as refused:
                        client.chat.completions.create(model=model, max_tokens=max_tokens,
                                                       messages=[{"role": "user", "content": too_long}])
                    assert "maximum context length is 2048 tokens" in refused.value.message, refused.value
            # A prompt that fits still meets the limit.
            assert _refused(lambda: _chat(client, CHAT, "x " * 200, max_tokens=200)) == (429, "ModelArts.81103")
        finally:
            admin.put(f"/presets/{CHAT}", json={"kind": "free"})


def test_count_and_storage_limits_hold_under_parallel_creates(platform, tmp_path):
    """Before: the 30-key and 10-endpoint limits and the models quota were count-then-insert (parallel creates
    passed them), and a project could fill the disk with model versions."""
    _key, rest = _tenant(platform, "evil-par")
    with ThreadPoolExecutor(40) as pool:
        keys = list(pool.map(lambda i: rest.post("/keys", json={"label": f"k{i}", "description": "x"}), range(40)))
    assert sorted(r.status_code for r in keys) == [201] * 29 + [400] * 11
    assert len(rest.get("/keys").json()) == 30
    with platform.admin() as admin:
        assert admin.put(f"/presets/{EMBED}", json={"kind": "commercial"}).status_code == 200
        try:
            assert rest.post("/presets/activate", json={"models": [EMBED]}).status_code == 200
            with ThreadPoolExecutor(14) as pool:
                endpoints = list(pool.map(lambda i: rest.post("/endpoints", json={"name": f"ep{i}",
                                                                                   "service": EMBED}), range(14)))
        finally:
            admin.put(f"/presets/{EMBED}", json={"kind": "free"})
        assert sorted(r.status_code for r in endpoints) == [201] * 10 + [400] * 4
        assert len(rest.get("/endpoints").json()) == 10
        assert admin.put("/projects/evil-par/quotas", json={"models": 3, "model_disk_mb": 1}).is_success
    adapters = [lora_adapter(tmp_path / f"a{i}") for i in range(8)]
    for adapter in adapters:
        (adapter / "adapter_model.safetensors").write_bytes(b"\0" * 200 * 1024)
    with ThreadPoolExecutor(8) as pool:
        models = list(pool.map(lambda i: rest.post("/my-models", json={"name": f"m{i}", "base_model": CHAT,
                                                                       "path": str(adapters[i])}), range(8)))
    assert sorted(r.status_code for r in models) == [201] * 3 + [400] * 5
    assert all("at most 3 models" in r.json()["error_msg"] for r in models if r.status_code == 400)
    assert len(rest.get("/my-models").json()) == 3
    # The storage quota: every version counts (3 x 200 KiB in use); 600 KiB more is over 1 MiB.
    big = lora_adapter(tmp_path / "big")
    (big / "adapter_model.safetensors").write_bytes(b"\0" * 600 * 1024)
    name = next(r.json()["name"] for r in models if r.status_code == 201)
    over = rest.post(f"/my-models/{name}/versions", json={"path": str(big)})
    assert over.status_code == 400 and over.json()["error_code"] == "MaaS.0400"
    assert over.json()["error_msg"].startswith("Over the project's storage quota: at most 1 MiB of model weights")
    assert [v["version"] for v in rest.get(f"/my-models/{name}/versions").json()] == [1]
    assert platform.maas_json("projects", "quotas", "evil-par")["model_disk_mb"] == 1


def test_a_deleted_key_is_refused_on_the_very_next_call_while_the_actor_reloads(platform):
    """Before: a key was added to / revoked in the actor before the commit, so a reload in between could bring a
    deleted key back. Here reloads run all the time (an admin re-saving an offer reloads the actor) while keys
    are created and deleted: a created key works at once, a deleted one never again."""
    _key, rest = _tenant(platform, "evil-race")
    stop, reloads = threading.Event(), []
    began = [0.0, 0.0]  # per reloader: when its last finished reload began (a PUT answers after the reload)

    def reload_forever(index: int) -> None:
        with platform.admin() as admin:
            while not stop.is_set():
                start = time.time()
                reloads.append(admin.put(f"/presets/{EMBED}", json={"kind": "free"}).status_code)
                began[index] = start

    reloaders = [threading.Thread(target=reload_forever, args=(i,)) for i in range(2)]
    for thread in reloaders:
        thread.start()
    deleted = []
    try:
        for i in range(12):
            created = rest.post("/keys", json={"label": f"race{i}", "description": "x"}).json()
            models = httpx.get(platform.base_url + "/v1/models", headers={"Authorization": f"Bearer {created['key']}"})
            assert models.status_code == 200, (i, models.text)
            assert rest.delete(f"/keys/{created['id']}").status_code == 204
            after = httpx.get(platform.base_url + "/v1/models", headers={"Authorization": f"Bearer {created['key']}"})
            assert after.status_code == 401 and after.json()["error_code"] == "ModelArts.81003", (i, after.text)
            deleted.append(created["key"])
        # Every reload that began before the last delete's commit has ended: each reloader (one reload at a
        # time) has finished one that began after it.
        last_delete = time.time()
        wait_for(lambda: min(began) > last_delete, 60, "a reload begun after the last delete, on each reloader")
        for secret in deleted:
            again = httpx.get(platform.base_url + "/v1/models", headers={"Authorization": f"Bearer {secret}"})
            assert again.status_code == 401
    finally:
        stop.set()
        for thread in reloaders:
            thread.join(60)
    assert len(reloads) >= 12 and set(reloads) == {200}


def test_a_nul_in_a_recorded_string_neither_fails_nor_blocks_the_other_records(platform):
    """Before (on PostgreSQL): a NUL byte in a recorded string (here the caller's `model`) failed the whole
    group commit of usage rows, for every tenant, and was re-sent forever. The same test runs on SQLite and,
    with MAAS_TEST_DATABASE=postgres, on PostgreSQL."""
    key, rest = _tenant(platform, "evil-nul")
    client = platform.client(key)

    def call(i: int):
        if i % 2:
            return _refused(lambda: _chat(client, "tiny-chat\u0000"))
        return _chat(client, CHAT).usage.total_tokens

    with ThreadPoolExecutor(6) as pool:  # the good and the bad calls settle in the same batches
        outcomes = list(pool.map(call, range(6)))
    bad = outcomes[1::2]  # refused as a model that does not exist
    assert bad == [(404, "The model `tiny-chat\u0000` does not exist.")] * 3, outcomes
    assert all(t > 0 for t in outcomes[0::2]), outcomes
    deadline = time.time() + 30
    while (totals := rest.get("/usage/summary").json()["totals"])["calls"] < 6:
        assert time.time() < deadline, totals
        time.sleep(0.3)
    assert totals["calls"] == 6 and totals["failures"] == 3 and totals["total_tokens"] >= sum(outcomes[0::2])
    failures = rest.get("/usage/failures").json()
    assert failures["total"] == 3 and [c["status"] for g in failures["groups"] for c in g["codes"]] == [bad[0][0]]
    assert _chat(client, CHAT).usage.total_tokens > 0  # and the ledger still takes records
