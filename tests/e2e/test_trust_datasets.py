"""Trust, round 2 (issue 26), datasets on the real platform, as a black box: a fresh project's own key uploads
200 MiB of `{}` lines through the REST API and names it in a job; the job fails with the first 100 errors
while another project's chat calls keep answering 200 and the control plane's replica grows by less than 200 MB
(validation runs in a memory-capped child process; before, 100 MB of such lines grew the replica to 18.75 GB
and Ray's memory monitor killed the Serve controller, the gateways and the engines). And a 1 GiB upload
without a key is answered before the platform reads it. The same in-process: tests/db/test_trust_datasets.py."""

from __future__ import annotations

import threading
import time

import httpx
import psutil
import pytest

from tests.bodies import MiB, PeakRss, send_until_answered, upload, write_repeated

pytestmark = pytest.mark.e2e
CHAT = "tiny-chat"


@pytest.fixture(scope="module")
def hostile(platform):
    project, key = platform.new_project("t26-data")
    with httpx.Client(base_url=f"{platform.base_url}/api/v1/{project}", timeout=600,
                      headers={"Authorization": f"Bearer {key}"}) as client:
        yield client


def control_plane_replica() -> psutil.Process:
    (replica,) = [p for p in psutil.process_iter(["cmdline"])
                  if any("ServeReplica:maas-control:" in part for part in p.info["cmdline"] or [])]
    return replica


def test_a_200_mib_dataset_of_empty_objects_fails_its_job_while_other_tenants_are_served(platform, hostile,
                                                                                          client, tmp_path):
    path = write_repeated(tmp_path / "empty-objects.jsonl", b"{}\n", 200 * MiB)
    answers, done = [], threading.Event()

    def chat_meanwhile():
        while not done.is_set():
            try:
                client.chat.completions.create(model=CHAT, messages=[{"role": "user", "content": "hi"}],
                                               max_tokens=4)
                answers.append(200)
            except Exception as exc:  # every failure is counted, whatever it is
                answers.append(getattr(exc, "status_code", type(exc).__name__))

    caller = threading.Thread(target=chat_meanwhile, daemon=True)
    caller.start()
    try:
        with PeakRss(control_plane_replica()) as rss:
            stored = upload(hostile, path)
            assert stored.status_code == 201, stored.text
            job = hostile.post("/finetune", json={"name": "hostile", "model": CHAT, "type": "lora",
                                                  "dataset": stored.json()["id"], "output_model": "hostile-out"})
            time.sleep(2)  # calls after the refusal too
    finally:
        done.set()
        caller.join(120)
    assert job.status_code == 201 and job.json()["status"] == "failed" and job.json()["runs"] == 0
    assert job.json()["status_reason"].splitlines() == [
        "dataset validation failed", "dataset is invalid (validation stopped at the first 100 errors):",
        *(f"  line {n}, {field}: Field required" for n in range(1, 51) for field in ("instruction", "output"))]
    assert answers and set(answers) == {200}, answers
    assert rss.growth < 200 * MiB, f"the control plane's replica grew by {rss.growth / MiB:.0f} MiB"


def test_an_upload_without_a_key_is_answered_before_it_is_read(platform):
    status, body, sent = send_until_answered(f"{platform.base_url}/api/v1", "/api/v1/default/datasets", {}, 2**30)
    assert (status, body) == (400, {"error_code": "ModelArts.81002",
                                    "error_msg": "Failed to get the authorization header."})
    # HAProxy's buffers and two connections' socket buffers lie between (10 MiB seen); before, all of the 1 GiB
    assert sent < 64 * MiB, f"{sent / MiB:.1f} MiB of the 1 GiB were sent before the answer"
