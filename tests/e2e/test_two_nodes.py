"""Two Ray nodes on this machine (issue 16): the session's platform as the head (MAAS_STORAGE apart from
MAAS_HOME, PostgreSQL), and a worker node started with `ray start --address ... --resources
'{"maas-node-worker": 1}'` in a mount namespace of its own, where a private empty directory hides MAAS_HOME: it
sees MAAS_STORAGE only, as a machine of its own would. Through the gateway with the official openai client, a
service whose engine is placed on the worker node (`node_type`) serves a my-model version imported after the
start; a LoRA fine-tune with 2 workers, one per node, completes and is served; and one whose worker node's raylet
is killed resumes from its checkpoint on MAAS_STORAGE and completes.
Run with `make test-cluster` (a session of its own: see tests/e2e/conftest.py)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from serve_apps.tiny_chat import _COLORS, _THINGS, _color_of
from tests.helpers import (DASHBOARD_PORT, required, start_worker_node, stop_worker_node, wait_status,
                           worker_node_processes)

NODE_TYPE = "maas-node-worker"
DASHBOARD = f"http://127.0.0.1:{DASHBOARD_PORT}"
pytestmark = pytest.mark.cluster


@pytest.fixture(scope="session", autouse=True)  # session: checked before the platform starts (minutes)
def root_and_unshare():
    """A mount namespace of its own (`unshare --mount`) needs root and util-linux: without them the module is
    skipped, or fails where MAAS_REQUIRE_ROOT=1 (.ci/run)."""
    if os.geteuid() != 0:
        required("MAAS_REQUIRE_ROOT", "a mount namespace of its own (unshare --mount) needs root")
    if shutil.which("unshare") is None:
        required("MAAS_REQUIRE_ROOT", "unshare (util-linux) is not installed")

# Run by the platform's python as a Ray driver: what the worker node's own processes see (a task placed there by
# the node type), and which node is the head.
PROBE = """
import json, os, sys, time
import ray

ray.init(address=os.environ["RAY_ADDRESS"], logging_level="ERROR", log_to_driver=False)
deadline = time.time() + 120
while not any(n["Alive"] and n["Resources"].get(sys.argv[1]) for n in ray.nodes()):
    assert time.time() < deadline, ray.nodes()
    time.sleep(1)

@ray.remote(num_cpus=0, resources={sys.argv[1]: 0.01})
def look():
    home, storage = os.environ["MAAS_HOME"], os.environ["MAAS_STORAGE"]
    return {"node": ray.get_runtime_context().get_node_id(), "home": sorted(os.listdir(home)),
            "storage": sorted(os.listdir(storage)), "tiny_chat": os.path.isfile(f"{storage}/models/tiny-chat/config.json")}

seen = ray.get(look.remote())
alive = [n for n in ray.nodes() if n["Alive"]]
head = next(n["NodeID"] for n in alive if "node:__internal_head__" in n["Resources"])
print(json.dumps(seen | {"head": head, "alive": len(alive)}))
"""


def _probe(platform) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE, NODE_TYPE], env=platform.env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def worker(platform, tmp_path_factory) -> dict:
    assert platform.storage is not None and platform.database_url.startswith("postgresql"), platform.database_url
    start = time.time()
    start_worker_node(platform.env, tmp_path_factory.mktemp("worker-home"), {NODE_TYPE: 1}, num_cpus=4)
    seen = _probe(platform)
    print(f"worker node joined in {time.time() - start:.1f} s: {seen}")
    yield seen
    stop_worker_node()
    admin = platform.admin()
    for model in admin.get("/default/my-models").json():  # the model store is a cache shared between sessions
        if model["name"].startswith("two-nodes"):
            admin.delete(f"/default/my-models/{model['id']}", params={"confirm": "DELETE"})


def test_the_worker_node_sees_the_storage_and_not_the_heads_home(platform, worker):
    assert worker["alive"] == 2 and worker["node"] != worker["head"]
    assert worker["home"] == []  # the head's MAAS_HOME (credentials, logs, ray_env.json) is not there
    assert (platform.home / "ray_env.json").is_file()  # which `maas up` wrote there on the head
    assert "models" in worker["storage"] and worker["tiny_chat"]


def _replica_nodes(app_name: str) -> set[str]:
    apps = httpx.get(f"{DASHBOARD}/api/serve/applications/", timeout=30).json()["applications"]
    return {r["node_id"] for d in apps[app_name]["deployments"].values() for r in d["replicas"]
            if r["state"] == "RUNNING"}


def test_a_service_placed_on_the_worker_node_serves_a_model_imported_after_start(platform, worker, tmp_path):
    admin = platform.admin()
    upload = tmp_path / "weights"
    shutil.copytree(platform.storage / "models" / "tiny-chat", upload)
    created = admin.post("/default/my-models", json={"name": "two-nodes", "base_model": "tiny-chat",
                                                     "path": str(upload)})
    assert created.status_code == 201, created.text
    model = created.json()
    [version] = model["versions"]
    assert Path(version["path"]).is_relative_to(platform.storage)  # on the storage every node mounts
    deployed = admin.post("/default/services", json={"name": "on-worker", "model": model["id"],
                                                     "node_type": NODE_TYPE})
    assert deployed.status_code == 201 and deployed.json()["node_type"] == NODE_TYPE, deployed.text
    service = deployed.json()
    try:
        started = time.time()
        running = wait_status(platform, service["id"], {"Running"}, timeout=600)
        print(f"engine on the worker node running in {time.time() - started:.1f} s")
        assert _replica_nodes(running["app_name"]) == {worker["node"]}
        client = platform.client(platform.new_key("two-nodes")["key"])
        thing = _THINGS[0]
        reply = client.chat.completions.create(model="on-worker", max_tokens=16, temperature=0, messages=[
            {"role": "user", "content": f"what is the color of the {thing} ?"}])
        assert re.fullmatch(r"the \w+ is \w+ \.", reply.choices[0].message.content.strip()), reply  # tiny-chat's form
        assert reply.usage.completion_tokens > 0
        # Streamed: after its first batch the stream comes over a connection from the worker node's engine
        # replica to the gateway on the head (serve_apps.direct_stream), and arrives whole.
        chunks = list(client.chat.completions.create(
            model="on-worker", max_tokens=64, stream=True, extra_body={"ignore_eos": True},
            stream_options={"include_usage": True, "continuous_usage_stats": True},
            messages=[{"role": "user", "content": "tell me a story"}]))
        assert chunks[-1].usage.completion_tokens == 64
        # Whole: the last chunk with a choice (the one with finish_reason, always sent) says all 64 tokens were
        # relayed. Counting content chunks would fall short by a random few: a token whose text decodes empty (many,
        # with ignore_eos past tiny-chat's end) sends no content chunk.
        last = [c for c in chunks if c.choices][-1]
        assert last.choices[0].finish_reason == "length" and last.usage.completion_tokens == 64, last
        assert sum(bool(c.choices and c.choices[0].delta.content) for c in chunks) > 0
    finally:
        admin.post(f"/default/services/{service['id']}/stop")
        wait_status(platform, service["id"], {"Terminated", "Failed"}, timeout=180)
        admin.delete(f"/default/services/{service['id']}", params={"confirm": "DELETE"})


ROWS = [{"instruction": f"what is the color of the {t} ?",
         "output": f"the {t} is {_COLORS[(_COLORS.index(_color_of(t)) + 3) % len(_COLORS)]} ."} for t in _THINGS[:4]]


def _tuning_job(admin, name: str, **params) -> dict:
    upload = admin.post("/default/datasets", files={"file": (
        "colors.jsonl", "".join(json.dumps(r) + "\n" for r in ROWS).encode())})
    assert upload.status_code == 201, upload.text
    created = admin.post("/default/finetune", json={
        "name": name, "model": "tiny-chat", "type": "lora", "dataset": upload.json()["id"], "output_model": name,
        "workers": 2, "spread_workers": True, "global_batch_size": 2, "max_seq_len": 64, "learning_rate": 0.005}
        | params)
    assert created.status_code == 201, created.text
    assert created.json()["params"]["spread_workers"] is True
    return created.json()


def _ended(admin, job: dict, timeout: float = 600) -> dict:
    deadline = time.time() + timeout
    while (job := admin.get(f"/default/finetune/{job['id']}").json())["status"] not in ("completed", "failed",
                                                                                         "stopped"):
        assert time.time() < deadline, job
        time.sleep(1)
    return job


def _train_workers(state: str | None = None) -> list:
    from ray.util.state import list_actors

    filters = [("class_name", "=", "RayTrainWorker")] + ([("state", "=", state)] if state else [])
    return list_actors(address=DASHBOARD, filters=filters, detail=True, raise_on_missing_output=False, limit=1000)


def _right(client, model: str) -> int:
    """How many of ROWS the model answers exactly as the dataset says (greedy)."""
    return sum(client.chat.completions.create(model=model, max_tokens=16, temperature=0, messages=[
        {"role": "user", "content": row["instruction"]}]).choices[0].message.content.strip() == row["output"]
               for row in ROWS)


def test_a_lora_fine_tune_with_one_worker_per_node_completes_and_is_served(platform, worker):
    admin = platform.admin()
    # 30 epochs of the 4 rows, 2 per step: 60 steps, the fewest that learn them reliably (a plain PyTorch run of
    # the same loop and schedule learned 4 of 4 with each of 5 seeds at 20-40 epochs, 1 to 4 of 4 at 10).
    job, started = _tuning_job(admin, "two-nodes-lora", epochs=30), time.time()
    assert job["iterations"] == 60, job
    job = _ended(admin, job)
    assert job["status"] == "completed", (job, admin.get(f"/default/finetune/{job['id']}/logs").text[-3000:])
    print(f"fine-tune with 2 workers (60 steps) completed in {time.time() - started:.1f} s")
    assert {a.node_id for a in _train_workers()} == {worker["head"], worker["node"]}
    assert job["progress"]["loss"] < 0.2, job["progress"]
    version = admin.get("/default/my-models/two-nodes-lora").json()["versions"][-1]
    assert version["kind"] == "lora" and Path(version["path"]).is_relative_to(platform.storage), version
    # Served on tiny-chat's engine under its own name, it answers as trained; tiny-chat keeps its own answers.
    client = platform.client(platform.new_key("two-nodes-lora")["key"])
    assert _right(client, "two-nodes-lora") == len(ROWS)
    assert _right(client, "tiny-chat") <= 1


def test_a_fine_tune_resumes_from_its_checkpoint_after_the_worker_nodes_raylet_is_killed(platform, worker):
    """Last: the worker node is gone afterwards. Ray Train restarts the worker group (max_failures) from the
    latest checkpoint on MAAS_STORAGE, on the nodes left."""
    import psutil

    from train_jobs import checkpointing

    admin = platform.admin()
    before = {a.actor_id for a in _train_workers()}
    job = _tuning_job(admin, "two-nodes-resume", epochs=50, checkpoints=10)  # 100 steps, a checkpoint every 10
    run_dir = platform.storage / "finetune" / "default" / job["id"] / "two-nodes-resume"
    deadline = time.time() + 300
    while checkpointing.latest(run_dir, "adapter") is None:
        job = admin.get(f"/default/finetune/{job['id']}").json()
        assert job["status"] in ("pending", "starting", "running") and time.time() < deadline, job
        time.sleep(0.2)
    alive = [a for a in _train_workers("ALIVE") if a.actor_id not in before]
    assert {a.node_id for a in alive} == {worker["head"], worker["node"]}, alive
    [raylet] = [p for p in worker_node_processes() if p.name() == "raylet"]
    killed_at = checkpointing.step_of(checkpointing.latest(run_dir, "adapter"))
    raylet.send_signal(signal.SIGKILL)
    psutil.wait_procs([raylet], timeout=30)
    job = _ended(admin, job, timeout=900)
    logs = admin.get(f"/default/finetune/{job['id']}/logs").text
    assert job["status"] == "completed", (job, logs[-3000:])
    print(f"raylet of the worker node killed after the checkpoint of step {killed_at}; resumes: {job['resumes']}")
    assert job["resumes"] and job["resumes"][-1]["step"] >= killed_at, job["resumes"]
    assert f"resumed from the checkpoint of step {job['resumes'][-1]['step']}" in logs
    assert job["progress"]["step"] == job["iterations"] == 100, job["progress"]
