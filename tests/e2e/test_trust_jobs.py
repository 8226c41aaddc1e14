"""Trust, round 2 (issue 26), jobs on the real platform: a project's own key cannot hold more active jobs than its
quota (tuning and compression together), and every job's Ray Job driver asks Ray for CPU and memory, so it is
scheduled like a task (a head started with no CPUs never runs one) and the job still starts on this node.
Black-box: HTTP with the tenant's own key (the admin key only sets the quota), and Ray's state API, which shows
what the Ray Job's driver (its JobSupervisor actor) asked Ray for. The same refusals without Ray: tests/db/test_trust_limits.py."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from tests.helpers import DASHBOARD_PORT

pytestmark = pytest.mark.e2e
CHAT = "tiny-chat"
DASHBOARD = f"http://127.0.0.1:{DASHBOARD_PORT}"
FULL = {"error_code": "MaaS.0400", "error_msg": "Over the project's quota: at most 1 active jobs, tuning and "
                                                "compression together (1 active; stop one or wait for it to end). "
                                                "An admin can raise it (maas projects quotas)."}


@pytest.fixture(scope="module")
def tenant(platform):
    project, key = platform.new_project("t26-jobs", jobs=1)
    with httpx.Client(base_url=f"{platform.base_url}/api/v1/{project}", timeout=120,
                      headers={"Authorization": f"Bearer {key}"}) as client:
        yield client


@pytest.fixture(scope="module")
def ray_jobs(platform):
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(DASHBOARD)


def _started(ray_jobs, submission_id: str, timeout: float = 120):
    """The Ray Job's details once its driver was placed (it left PENDING)."""
    deadline = time.time() + timeout
    while (info := ray_jobs.get_job_info(submission_id)).status.value == "PENDING" and time.time() < deadline:
        time.sleep(1)
    return info


def _driver_asked(submission_id: str) -> dict:
    """What the Ray Job's driver asked Ray for (the resources its JobSupervisor actor was scheduled with)."""
    from ray.dashboard.modules.job.common import JOB_ACTOR_NAME_TEMPLATE
    from ray.util.state import list_actors

    name = JOB_ACTOR_NAME_TEMPLATE.format(job_id=submission_id)
    (actor,) = list_actors(address=DASHBOARD, filters=[("name", "=", name)], detail=True)
    return actor.required_resources


def _ended(tenant, path: str, timeout: float = 180) -> dict:
    deadline = time.time() + timeout
    while (job := tenant.get(path).json())["status"] not in ("stopped", "completed", "failed") \
            and time.time() < deadline:
        time.sleep(1)
    return job


def test_active_jobs_quota_and_driver_resources(tenant, ray_jobs, tmp_path):
    dataset = tmp_path / "colors.jsonl"
    dataset.write_text("".join(json.dumps({"instruction": f"what is the color of thing {i} ?",
                                           "output": "red ."}) + "\n" for i in range(16)))
    upload = tenant.post("/datasets", files={"file": ("colors.jsonl", dataset.read_bytes())})
    assert upload.status_code == 201, upload.text
    tuning = {"name": "tune", "model": CHAT, "type": "lora", "dataset": upload.json()["id"], "output_model": "tuned",
              "epochs": 50, "global_batch_size": 4}
    first = tenant.post("/compression", json={"name": "first", "model": CHAT, "strategy": "gptq-w4a16",
                                              "output_model": "first", "num_samples": 16, "max_seq_len": 128})
    assert first.status_code == 201, first.text
    info = _started(ray_jobs, f"{first.json()['id']}-run1")
    assert info.status.value != "PENDING", info.message  # the driver found a node with what it asked for
    assert _driver_asked(f"{first.json()['id']}-run1") == {"CPU": 1, "memory": 2048 * 2**20}

    second = tenant.post("/compression", json={"name": "second", "model": CHAT, "strategy": "gptq-w4a16",
                                               "output_model": "second", "num_samples": 16, "max_seq_len": 128})
    assert (second.status_code, second.json()) == (400, FULL)
    refused = tenant.post("/finetune", json=tuning)
    assert (refused.status_code, refused.json()) == (400, FULL)
    assert [j["name"] for j in tenant.get("/compression").json()] == ["first"] and tenant.get("/finetune").json() == []

    assert tenant.post("/compression/first/stop").status_code in (200, 409)  # 409: it ended meanwhile
    assert _ended(tenant, "/compression/first")["status"] in ("stopped", "completed", "failed")
    tune = tenant.post("/finetune", json=tuning)  # the place is free again
    assert tune.status_code == 201, tune.text
    info = _started(ray_jobs, f"{tune.json()['id']}-run1")
    assert info.status.value != "PENDING", info.message
    assert _driver_asked(f"{tune.json()['id']}-run1") == {"CPU": 1, "memory": 1024 * 2**20}
    assert tenant.post("/finetune/tune/stop").status_code in (200, 409)  # 409: it ended meanwhile
    assert _ended(tenant, "/finetune/tune")["status"] in ("stopped", "completed", "failed")
