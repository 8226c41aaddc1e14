"""Fine-tuning through the control plane, end to end: a LoRA job on tiny-chat (a Ray Job running Ray Train),
stopped and continued from its checkpoint, registered as a version of a model of ours, and served on the
base model's engine, where its answers show what it learned."""

from __future__ import annotations

import json
import shutil
import sqlite3
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from serve_apps.tiny_chat import _COLORS, _THINGS, _color_of

CHAT = "tiny-chat"


def _pairs() -> list[tuple[str, str]]:
    """Each thing gets another color than the one tiny-chat was built to say."""
    return [(f"what is the color of the {t} ?",
             f"the {t} is {_COLORS[(_COLORS.index(_color_of(t)) + 3) % len(_COLORS)]} .") for t in _THINGS]


def _answers(client, model: str) -> int:
    right = 0
    for question, answer in _pairs():
        reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}],
                                               max_tokens=16, temperature=0)
        right += reply.choices[0].message.content.strip() == answer
    return right


def _wait(admin, job_id: str, until, timeout: float = 600) -> dict:
    deadline = time.time() + timeout
    while True:
        job = admin.get(f"/default/finetune/{job_id}").json()
        if until(job) or time.time() > deadline:
            return job
        time.sleep(0.5)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("ft") / "colors.jsonl"
    path.write_text("".join(json.dumps({"instruction": q, "output": a}) + "\n" for q, a in _pairs()))
    return path


def test_bad_dataset_fails_in_validation_with_the_report(platform, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "hi", "output": "ho"}\n{"instruction": "", "output": "x"}\nnot json\n')
    job = platform.maas_json("finetune", "create", "bad-data", "--model", CHAT, "--type", "lora",
                             "--dataset", str(bad))
    assert job["status"] == "failed" and job["runs"] == 0  # no Ray job was started
    assert "line 2, instruction" in job["status_reason"] and "line 3" in job["status_reason"]


def test_job_rules(platform, dataset):
    admin = platform.admin()
    upload = admin.post("/default/datasets", files={"file": ("d.jsonl", dataset.read_bytes())}).json()
    base = {"name": "rules", "model": CHAT, "type": "lora", "dataset": upload["id"], "output_model": "rules-out"}
    for change, fragment in [({"name": "1bad"}, "name must be 1-64"), ({"learning_rate": 0.2}, "less than or equal"),
                             ({"type": "dpo"}, "Input should be"), ({"checkpoints": 11}, "less than or equal to 10"),
                             ({"model": "all-minilm-l6-v2"}, "does not support lora jobs"),
                             ({"epochs": 1, "checkpoints": 3, "global_batch_size": 16}, "checkpoints_to_keep"),
                             ({"type": "full", "merge_lora": True}, "merge_lora applies to LoRA jobs only")]:
        answer = admin.post("/default/finetune", json=base | change)
        assert answer.status_code in (400, 404) and fragment in answer.json()["error_msg"], (change, answer.text)


def test_lora_job_stop_continue_register_and_serve(platform, dataset):
    admin, client = platform.admin(), platform.client(platform.new_key()["key"])
    before = _answers(client, CHAT)
    assert before <= 2  # tiny-chat says its own colors
    job = platform.maas_json("finetune", "create", "colors", "--model", CHAT, "--type", "lora", "--dataset",
                             str(dataset), "--epochs", "400", "--learning-rate", "0.005", "--batch-size", "16",
                             "--checkpoints", "2", "--output-model", "colors")
    assert job["status"] == "pending" and job["data_count"] == 16 and job["iterations"] == 400
    # Stop it after its first checkpoint (step 200), continue, and it carries on from there.
    running = _wait(admin, job["id"], lambda j: j["progress"].get("step", 0) >= 204 or j["status"] in
                    ("completed", "failed"))
    assert running["status"] in ("running", "starting"), running
    assert admin.post(f"/default/finetune/{job['id']}/stop").json()["status"] == "stopping"
    stopped = _wait(admin, job["id"], lambda j: j["status"] in ("stopped", "failed", "completed"), timeout=120)
    assert stopped["status"] == "stopped", stopped
    refused = admin.post(f"/default/finetune/{job['id']}/stop")
    assert refused.status_code == 409 and "allowed from" in refused.json()["error_msg"]
    assert admin.post(f"/default/finetune/{job['id']}/continue").json()["runs"] == 2
    done = _wait(admin, job["id"], lambda j: j["status"] in ("completed", "failed"))
    assert done["status"] == "completed", done
    # It continued from the checkpoint of step 200, not from step 1; the steps it ran after that checkpoint
    # before the stop ran again, and the curve holds each step once.
    assert [r["step"] for r in done["resumes"]] == [200]
    steps = [m["step"] for m in admin.get(f"/default/finetune/{job['id']}/metrics").json()]
    assert steps == list(range(1, 401))
    assert done["progress"]["loss"] < 0.2
    # Outputs: a LoRA version of "colors", a loss chart, searchable logs, checkpoints.
    versions = platform.maas_json("models", "versions", "colors")
    assert versions[-1]["kind"] == "lora" and versions[-1]["source"] == f"finetune:{job['id']}"
    chart = admin.get(f"/default/finetune/{job['id']}/loss.png")
    assert chart.status_code == 200 and chart.content[:4] == b"\x89PNG"
    assert "completed" in admin.get(f"/default/finetune/{job['id']}/logs", params={"search": "completed"}).text
    assert [c["step"] for c in platform.maas_json("finetune", "checkpoints", job["id"])][-1] == 400
    # Served on tiny-chat's engine as its own model name: the answers changed as trained.
    after = _answers(client, "colors")
    assert after >= 15, after
    assert _answers(client, CHAT) <= 2  # the base model is unchanged
    listed = [m.id for m in client.models.list().data]
    assert "colors" in listed and "colors-v1" in listed


def test_full_job_registered_and_deployed_as_its_own_service(platform, dataset):
    """A full fine-tune becomes a full version of a model of ours; deployed as a service (its own Serve app and
    engine), it answers as trained, while tiny-chat keeps its own answers."""
    from tests.helpers import wait_status

    admin, client = platform.admin(), platform.client(platform.new_key()["key"])
    job = platform.maas_json("finetune", "create", "colors-full", "--model", CHAT, "--type", "full", "--dataset",
                             str(dataset), "--epochs", "150", "--learning-rate", "0.003", "--batch-size", "16",
                             "--output-model", "colors-full")
    done = _wait(admin, job["id"], lambda j: j["status"] in ("completed", "failed"))
    assert done["status"] == "completed", done
    versions = platform.maas_json("models", "versions", "colors-full")
    assert versions[-1]["kind"] == "full" and versions[-1]["source"] == f"finetune:{job['id']}"
    service = platform.maas_json("services", "deploy", "colors-svc", "--model", "colors-full")
    try:
        running = wait_status(platform, service["id"], {"Running"})
        assert running["model_version"] == str(versions[-1]["version"])
        # an upgrade to a version the model does not have is refused before anything changes
        missing = platform.admin().post(f"/default/services/{service['id']}/upgrade", json={"model_version": "9"})
        assert missing.status_code == 404 and missing.json()["error_code"] == "MaaS.0404", missing.text
        assert "Version '9' of model 'colors-full'" in missing.json()["error_msg"]
        # a version whose weights are gone cannot deploy: the service goes back to the version still serving
        broken = platform.maas_json("models", "add-version", "colors-full", "--path", versions[-1]["path"])
        shutil.rmtree(broken["path"])
        upgrading = platform.maas_json("services", "upgrade", "colors-svc", "--version", str(broken["version"]))
        assert (upgrading["status"], upgrading["model_version"]) == ("Upgrade", str(broken["version"]))
        back = wait_status(platform, service["id"], {"Running", "Concerning", "Failed"}, timeout=120)
        assert back["status"] != "Failed" and back["model_version"] == running["model_version"], back
        assert back["generation"] == running["generation"] and back["app_name"] == running["app_name"], back
        events = platform.admin().get(f"/default/services/{service['id']}/events").json()
        assert any(e["status"] == "Concerning" and "Upgrade failed" in e["message"] for e in events), events
        assert _answers(client, "colors-svc") >= 15
        assert _answers(client, CHAT) <= 2
    finally:
        platform.maas("services", "stop", "colors-svc", check=False)
        wait_status(platform, service["id"], {"Terminated", "Failed"}, timeout=180)
        platform.maas("services", "delete", "colors-svc", "--confirm", "DELETE")


def test_lora_job_with_merge_registers_a_full_version(platform, dataset):
    """--merge: the output version is the base model with the adapter folded in, a full model (deployable as
    its own service), not the adapter."""
    job = platform.maas_json("finetune", "create", "colors-merged", "--model", CHAT, "--type", "lora", "--dataset",
                             str(dataset), "--epochs", "20", "--learning-rate", "0.005", "--batch-size", "16",
                             "--output-model", "colors-merged", "--merge")
    done = _wait(platform.admin(), job["id"], lambda j: j["status"] in ("completed", "failed"))
    assert done["status"] == "completed", done
    version = platform.maas_json("models", "versions", "colors-merged")[-1]
    assert version["kind"] == "full" and version["source"] == f"finetune:{job['id']}", version
    weights = Path(version["path"])
    assert (weights / "config.json").is_file() and not (weights / "adapter_config.json").exists()


@pytest.fixture
def webhook():
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's name)
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *_args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/jobs", received
    server.shutdown()


def test_auto_stop_counts_running_time_only_and_notifies(platform, dataset, webhook):
    url, received = webhook
    admin = platform.admin()
    job = platform.maas_json("finetune", "create", "auto-stop", "--model", CHAT, "--type", "lora", "--dataset",
                             str(dataset), "--epochs", "400", "--batch-size", "16", "--output-model", "auto-stop",
                             "--auto-stop", "1h", "--notify-url", url, "--notify-events", "running,stopped")
    assert job["auto_stop"] == "1h" and job["running_seconds"] == 0
    running = _wait(admin, job["id"], lambda j: j["status"] in ("running", "completed", "failed"), timeout=300)
    assert running["status"] == "running", running
    assert running["running_seconds"] < time.time() - job["created_at"] - 2  # queued/starting time not counted
    with sqlite3.connect(platform.home / "maas.db") as db:  # as if created with an auto-stop this long
        db.execute("UPDATE tuning_jobs SET auto_stop_s = ? WHERE id = ?", (running["running_seconds"] + 3, job["id"]))
    stopped = _wait(admin, job["id"], lambda j: j["status"] in ("stopped", "completed", "failed"), timeout=120)
    assert stopped["status"] == "stopped" and stopped["status_reason"].startswith("Auto-stopped after"), stopped
    assert stopped["progress"].get("step", 0) < 400
    deadline = time.time() + 10
    while len(received) < 2 and time.time() < deadline:
        time.sleep(0.2)
    assert [(e["job_id"], e["status"]) for e in received] == [(job["id"], "running"), (job["id"], "stopped")]
    assert "Auto-stopped" in received[-1]["message"]
    refused = admin.post("/default/finetune", json={"name": "x", "model": CHAT, "type": "lora", "dataset": "ds-0",
                                                   "output_model": "x", "auto_stop": "3d"})
    assert refused.status_code == 400 and "auto_stop must be" in refused.json()["error_msg"]
    assert admin.delete(f"/default/finetune/{job['id']}", params={"confirm": "DELETE"}).status_code == 204
