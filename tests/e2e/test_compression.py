"""Compression end to end (spec §6.2): a real llmcompressor job per strategy on tiny-chat (bounded
calibration), run as a Ray Job by the compression venv's python; each output becomes the next version of a
model of ours, marked with its strategy, and the W8A8 and AWQ W4A16 versions deploy as services whose vLLM
engines (int8 and 4-bit CPU kernels) answer through the gateway as the original does."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from tests.helpers import wait_status

CHAT = "tiny-chat"
QUESTIONS = [f"what is the color of the {t} ?" for t in ("sky", "grass", "sun", "snow", "coal", "sea", "rose",
                                                          "milk")]
STRATEGIES = {"smoothquant-w8a8": "sq", "awq-w4a16": "awq", "gptq-w4a16": "gptq"}


def _wait(admin, job_id: str, timeout: float = 420) -> dict:
    deadline = time.time() + timeout
    while True:
        job = admin.get(f"/default/compression/{job_id}").json()
        if job["status"] in ("completed", "failed", "stopped") or time.time() > deadline:
            return job
        time.sleep(1)


def _answers(client, model: str) -> list[str]:
    return [client.chat.completions.create(model=model, messages=[{"role": "user", "content": q}],
                                           max_tokens=12, temperature=0).choices[0].message.content
            for q in QUESTIONS]


@pytest.fixture(scope="module")
def compressed(platform) -> dict[str, dict]:
    """One job per strategy: SmoothQuant through the CLI (with --follow), the others through REST, all at once."""
    with platform.admin() as admin:
        jobs = {}
        for strategy in ("awq-w4a16", "gptq-w4a16"):
            response = admin.post("/default/compression", json={
                "name": f"tiny-{STRATEGIES[strategy]}", "model": CHAT, "strategy": strategy,
                "output_model": f"tiny-{STRATEGIES[strategy]}", "num_samples": 16, "max_seq_len": 128})
            assert response.status_code == 201, response.text
            jobs[strategy] = response.json()
            assert jobs[strategy]["status"] == "pending"
        jobs["smoothquant-w8a8"] = platform.maas_json(
            "compress", "create", "tiny-sq", "--model", CHAT, "--strategy", "smoothquant-w8a8",
            "--migration-strength", "0.8", "--output-model", "tiny-sq", "--samples", "16", "--max-seq-len", "128",
            "--follow")
        return {strategy: _wait(admin, job["id"]) for strategy, job in jobs.items()}


def test_each_strategy_becomes_a_marked_version_of_my_model(platform, compressed):
    with platform.admin() as admin:
        for strategy, job in compressed.items():
            assert job["status"] == "completed", (strategy, job["status_reason"])
            assert job["progress"]["percent"] == 100.0 and job["progress"]["total_steps"] >= 2
            assert job["outputs"]["calibration_samples"] == 16
            model = admin.get(f"/default/my-models/tiny-{STRATEGIES[strategy]}").json()
            [version] = model["versions"]
            assert version["id"] == job["result_version"] and version["kind"] == "full"
            assert version["quantization"] == strategy and version["source"] == f"compress:{job['id']}"
            config = json.loads((platform.home / "models" / "my" / model["id"] / "v1" / "config.json").read_text())
            scheme = config["quantization_config"]["config_groups"]["group_0"]
            assert scheme["weights"]["num_bits"] == (8 if strategy == "smoothquant-w8a8" else 4)
            assert (scheme["input_activations"] is not None) == (strategy == "smoothquant-w8a8")  # W8A8: int8 inputs
        assert compressed["smoothquant-w8a8"]["params"]["migration_strength"] == 0.8
        logs = admin.get(f"/default/compression/{compressed['awq-w4a16']['id']}/logs",
                         params={"search": "calibrating"}).text
        assert "calibrating layer group 1/" in logs and "completed" not in logs  # searched: only matching lines


def test_compressed_versions_deploy_and_answer_like_the_original(platform, compressed, client):
    names = {"smoothquant-w8a8": "svc-sq", "awq-w4a16": "svc-awq"}
    for strategy, name in names.items():
        platform.maas_json("services", "deploy", name, "--model", f"tiny-{STRATEGIES[strategy]}")
    original = _answers(client, CHAT)
    try:
        for strategy, name in names.items():
            assert wait_status(platform, name, {"Running", "Failed"})["status"] == "Running"
            answers = _answers(client, name)
            same = sum(a == b for a, b in zip(answers, original))
            assert same >= 6, (strategy, answers, original)  # greedy agreement with tiny-chat's own answers
    finally:
        for name in names.values():
            platform.maas("services", "delete", name, "--confirm", "DELETE", check=False)


def _refused(status: int, code: str, message: str) -> tuple[int, dict]:
    return status, {"error_code": code, "error_msg": message}


def test_deploy_only_and_the_product_rules(platform, compressed):
    def answer(response) -> tuple[int, dict]:
        return response.status_code, response.json()

    with platform.admin() as admin:
        again = admin.post("/default/compression", json={"name": "again", "model": "tiny-awq", "strategy": "awq-w4a16",
                                                         "output_model": "x"})
        assert answer(again) == _refused(400, "MaaS.0400", "Version 1 of 'tiny-awq' is already compressed "
                                                           "(awq-w4a16); compress the original.")
        # A dataset that exists: the only refusal left is finetune/service.py's rule for a compressed version.
        upload = admin.post("/default/datasets", files={"file": ("colors.jsonl", json.dumps(
            {"instruction": QUESTIONS[0], "output": "the sky is red ."}).encode() + b"\n")})
        assert upload.status_code == 201, upload.text
        tune = admin.post("/default/finetune", json={"name": "t", "model": "tiny-awq", "type": "lora",
                                                     "dataset": upload.json()["id"], "output_model": "y"})
        assert answer(tune) == _refused(400, "MaaS.0400", "Version 1 of 'tiny-awq' is compressed (awq-w4a16): "
                                                          "compressed models deploy only; tune the original.")
        assert "t" not in [j["name"] for j in admin.get("/default/finetune").json()]  # nothing was recorded
        for body, message in [
                ({"migration_strength": 1.2, "strategy": "smoothquant-w8a8"},
                 "migration_strength: Input should be less than or equal to 1"),
                ({"migration_strength": 0.3}, "body: Value error, migration_strength applies to smoothquant-w8a8 only"),
                ({"name": "9lives"}, "name: Value error, name must be 1-64 characters: a letter first, then letters, "
                                     "digits, - or _"),
                ({"output_model": "bad/name"}, "output_model: Value error, name must be 1-64 characters, start with a "
                                               "letter (CJK included) and contain only letters, digits, _, - or .")]:
            bad = admin.post("/default/compression", json={"name": "ok", "model": CHAT, "strategy": "awq-w4a16",
                                                           "output_model": "o"} | body)
            assert answer(bad) == _refused(400, "MaaS.0400", message), body
        nope = admin.post("/default/compression", json={"name": "ok", "model": "nope", "strategy": "awq-w4a16",
                                                        "output_model": "o"})
        assert answer(nope) == _refused(404, "MaaS.0404", "Model 'nope' does not exist.")
        job = compressed["gptq-w4a16"]
        assert answer(admin.post(f"/default/compression/{job['id']}/stop")) == _refused(
            409, "MaaS.0409", "Cannot stop the job 'tiny-gptq' while it is completed; stop is allowed from: alarm, "
                              "creating, pending, running, starting.")
        assert answer(admin.delete(f"/default/compression/{job['id']}")) == _refused(
            400, "MaaS.0400", "Deleting a compression job needs the confirmation text DELETE.")
        assert admin.delete(f"/default/compression/{job['id']}", params={"confirm": "DELETE"}).status_code == 204
        assert answer(admin.get(f"/default/compression/{job['id']}")) == _refused(
            404, "MaaS.0404", f"Compression job {job['id']!r} does not exist.")
        assert admin.get("/default/my-models/tiny-gptq").json()["versions"]  # the version outlives its job


def test_another_projects_key_sees_no_job(platform, compressed):
    with platform.admin() as admin:
        assert admin.post("/projects", json={"id": "cp-other"}).status_code in (201, 409)
        other = admin.post("/cp-other/keys", json={"label": "cp", "description": "cp"}).json()["key"]
    with httpx.Client(base_url=platform.base_url + "/api/v1", headers={"Authorization": f"Bearer {other}"}) as http:
        job = compressed["awq-w4a16"]
        assert http.get(f"/default/compression/{job['id']}").status_code == 403
        assert http.get("/cp-other/compression").json() == []
        assert http.get(f"/cp-other/compression/{job['id']}").status_code == 404
        stolen = http.post("/cp-other/compression", json={"name": "steal", "model": "tiny-awq",
                                                          "strategy": "gptq-w4a16", "output_model": "mine"})
        assert stolen.status_code == 404  # another project's model is not found
