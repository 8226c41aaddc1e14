"""Limits a tenant's own key cannot skip, through the control plane's real routes (cluster.app on SQLite, no Ray:
the accounting actor's reload and the reconciler's wake-up are no-ops, and the test writes the statuses the
reconciler and the job-sync thread would): active jobs per project, compression under the job quotas, the
instances quota on start and restart, checkpoint promotion limited to the job's own checkpoints, and name
rules that a trailing newline does not pass. The real Ray Jobs' driver resources: tests/e2e/test_trust_jobs.py."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from cluster.settings import get_settings
from cluster.state.db import CompressionJob, Service, TuningJob, session_scope
from tests.db.world import offline_control_plane
from tests.helpers import lora_adapter

pytestmark = pytest.mark.db
ADMIN = "admin-trust-limits"
CONSOLE = "/api/console"
LLAMA = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 128, "intermediate_size": 384}


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    with offline_control_plane(tmp_path_factory.mktemp("trust-limits"), ADMIN, LLAMA) as control_plane:
        yield control_plane


@pytest.fixture(scope="module")
def admin(app) -> TestClient:
    return TestClient(app, raise_server_exceptions=False, base_url="http://testserver/api/v1",
                      headers={"Authorization": f"Bearer {ADMIN}"})


def _tenant(app, admin, project: str) -> TestClient:
    """A new project and a client holding its own key (not the admin's)."""
    assert admin.post("/projects", json={"id": project}).status_code == 201
    key = admin.post(f"/{project}/keys", json={"label": "own", "description": "d"}).json()["key"]
    return TestClient(app, raise_server_exceptions=False, base_url=f"http://testserver/api/v1/{project}",
                      headers={"Authorization": f"Bearer {key}"})


def _job(project: str, name: str, status: str, table=TuningJob, **fields):
    """A job row as a create and the job-sync thread leave it."""
    settings, job_id = get_settings(), f"{'ft' if table is TuningJob else 'cp'}-{project}-{name}"
    common = dict(id=job_id, project_id=project, name=name, model_ref="tiny-chat", base_model="tiny-chat",
                  params={}, output_model=f"{name}-out", status=status, runs=1, submission_id=f"{job_id}-run1")
    if table is TuningJob:
        row = TuningJob(**common, job_type="lora", dataset_path="/x", dataset_format="alpaca",
                        output_dir=str(settings.finetune_dir() / project / job_id), **fields)
    else:
        row = CompressionJob(**common, strategy="awq-w4a16", source_path="/x",
                             output_dir=str(settings.compression_dir(project) / job_id), **fields)
    with session_scope(settings.database_url) as session:
        session.add(row)
    return row


def _over(what: str) -> dict:
    return {"error_code": "MaaS.0400",
            "error_msg": f"Over the project's quota: at most {what}. An admin can raise it (maas projects quotas)."}


# -- item 7: active jobs and the job quotas -----------------------------------------------------------------
def test_a_project_cannot_hold_more_active_jobs_than_its_quota(app, admin, tmp_path):
    tenant = _tenant(app, admin, "busy")
    assert admin.put("/projects/busy/quotas", json={"jobs": 2}).json()["jobs"] == 2
    _job("busy", "tuning", "running")
    _job("busy", "compressing", "pending", table=CompressionJob)
    _job("busy", "paused", "stopped")
    dataset = tmp_path / "d.jsonl"
    dataset.write_text(json.dumps({"instruction": "hi", "output": "ho"}) + "\n")
    upload = tenant.post("/datasets", files={"file": ("d.jsonl", dataset.read_bytes())})
    assert upload.status_code == 201, upload.text
    full = _over("2 active jobs, tuning and compression together (2 active; stop one or wait for it to end)")
    tune = tenant.post("/finetune", json={"name": "third", "model": "tiny-chat", "type": "lora",
                                          "dataset": upload.json()["id"], "output_model": "third-out"})
    assert (tune.status_code, tune.json()) == (400, full)
    compress = tenant.post("/compression", json={"name": "third", "model": "tiny-chat", "strategy": "awq-w4a16",
                                                 "output_model": "third-out", "num_samples": 4, "max_seq_len": 64})
    assert (compress.status_code, compress.json()) == (400, full)
    resumed = tenant.post("/finetune/paused/continue")  # a continue makes a job active again
    assert (resumed.status_code, resumed.json()) == (400, full)
    assert tenant.get("/finetune/paused").json()["status"] == "stopped"
    names = {j["name"] for j in tenant.get("/finetune").json()} | {j["name"] for j in tenant.get("/compression").json()}
    assert names == {"tuning", "compressing", "paused"}  # nothing was created
    with session_scope(get_settings().database_url) as session:  # another project's jobs are not counted
        assert session.query(TuningJob).filter(TuningJob.project_id != "busy").count() == 0


def test_compression_is_held_to_the_sequence_length_quota_as_tuning_is(app, admin):
    tenant = _tenant(app, admin, "long")
    long_calibration = tenant.post("/compression", json={
        "name": "long", "model": "tiny-chat", "strategy": "awq-w4a16", "output_model": "long-out",
        "num_samples": 4, "max_seq_len": 32768})
    assert (long_calibration.status_code, long_calibration.json()) == (
        400, _over("8192 tokens of a job's sequence length"))
    assert admin.put("/projects/long/quotas", json={"seq_len": 256}).status_code == 200
    over = tenant.post("/compression", json={"name": "long", "model": "tiny-chat", "strategy": "awq-w4a16",
                                             "output_model": "long-out", "max_seq_len": 512})
    assert (over.status_code, over.json()) == (400, _over("256 tokens of a job's sequence length"))
    assert tenant.get("/compression").json() == []


# -- item 8: the instances quota on every transition that brings instances up ------------------------------
def _stopped(name: str) -> None:
    """What the reconciler writes once Serve has deleted a stopped service's application."""
    with session_scope(get_settings().database_url) as session:
        session.query(Service).filter_by(name=name).update({"status": "Terminated"})


def test_stop_create_start_does_not_go_over_the_instances_quota(app, admin):
    tenant = _tenant(app, admin, "fleet")
    assert admin.put("/projects/fleet/quotas", json={"instances": 1}).json()["instances"] == 1
    assert tenant.post("/services", json={"name": "a", "model": "tiny-chat"}).status_code == 201
    assert tenant.post("/services/a/stop").status_code == 200
    _stopped("a")
    b = tenant.post("/services", json={"name": "b", "model": "tiny-chat"})
    assert b.status_code == 201, b.text
    full = _over("1 engine instances over running services (1 in use)")
    start = tenant.post("/services/a/start")
    assert (start.status_code, start.json()) == (400, full)
    service_id = tenant.get("/services/a").json()["id"]
    restart = tenant.post(f"/maas/services/{service_id}", json={"action_type": "restart"})
    assert (restart.status_code, restart.json()) == (400, full)
    a = tenant.get("/services/a").json()
    assert (a["status"], a["desired"]) == ("Terminated", "stopped")
    assert tenant.post("/services/b/stop").status_code == 200  # b's instance is free again: a may start
    _stopped("b")
    assert tenant.post("/services/a/start").json()["desired"] == "running"


# -- item 12: a checkpoint is one of the job's own ---------------------------------------------------------
def _completed_with_checkpoint(project: str, name: str) -> Path:
    row = _job(project, name, "completed")
    checkpoint = Path(row.output_dir) / name / "checkpoint_000010"
    lora_adapter(checkpoint / "adapter")
    return checkpoint


def _console(app, admin, project: str) -> tuple[TestClient, str]:
    """The console session of a new key of `project`, and its CSRF token."""
    key = admin.post(f"/{project}/keys", json={"label": "console", "description": "d"}).json()["key"]
    client = TestClient(app, raise_server_exceptions=False)
    token = re.search(r'name="csrf" value="([^"]+)"', client.get(f"{CONSOLE}/login").text)[1]
    page = client.post(f"{CONSOLE}/login", data={"csrf": token, "key": key})
    return client, re.search(r'data-csrf="([^"]+)"', page.text)[1]


def test_promote_takes_only_a_checkpoint_of_the_jobs_own_run(app, admin):
    tenant = _tenant(app, admin, "thief")
    assert admin.post("/projects", json={"id": "owner"}).status_code == 201
    theirs = _completed_with_checkpoint("owner", "secret")
    _completed_with_checkpoint("thief", "mine")
    to_theirs = "../../../" + str(theirs.relative_to(get_settings().finetune_dir()))
    assert (get_settings().finetune_dir() / "thief" / "ft-thief-mine" / "mine" / to_theirs / "adapter").is_dir()
    console, csrf = _console(app, admin, "thief")
    refused = {"error_code": "MaaS.0400", "error_msg": "A checkpoint to promote is one of this job's own, "
                                                       "checkpoint_<step>: checkpoint_000010."}
    pages = set()
    for checkpoint in (to_theirs, "../../../owner/ft-owner-nothing/nothing/checkpoint_000001", "checkpoint_000011",
                       "..", "checkpoint_000010/../../mine/checkpoint_000010", "checkpoint_000010\n"):
        page = console.post(f"{CONSOLE}/p/thief/finetune/mine/promote",
                            data={"csrf": csrf, "checkpoint": checkpoint, "output_model": "stolen"})
        assert page.status_code == 400, (checkpoint, page.status_code)
        pages.add(re.search(r'id="form-error"[^>]*>([^<]*)<', page.text)[1])
    for checkpoint in ("checkpoint_000011", "%2E%2E", "checkpoint_000010%0A", "checkpoint_1"):  # one path segment
        rest = tenant.post(f"/finetune/mine/checkpoints/{checkpoint}/promote", json={"output_model": "stolen"})
        assert (rest.status_code, rest.json()) == (400, refused), checkpoint
    assert pages == {"A checkpoint to promote is one of this job&#39;s own, checkpoint_&lt;step&gt;: checkpoint_000010."}
    assert tenant.get("/my-models").json() == []  # nothing was copied
    own = tenant.post("/finetune/mine/checkpoints/checkpoint_000010/promote", json={"output_model": "kept"})
    assert own.status_code == 201, own.text


# -- item 16: a trailing newline passes no name rule --------------------------------------------------------
@pytest.mark.parametrize("path, body, field", [
    ("/keys", {"label": "bad\n", "description": "d"}, "label"),
    ("/services", {"name": "bad\n", "model": "tiny-chat"}, "name"),
    ("/services", {"name": "bad", "model": "tiny-chat", "node_type": "maas-cpu\n"}, "node_type"),
    ("/endpoints", {"name": "bad\n", "service": "tiny-chat"}, "name"),
    ("/my-models", {"name": "bad\n", "base_model": "tiny-chat", "path": "/nowhere"}, "name"),
    ("/finetune", {"name": "bad\n", "model": "tiny-chat", "type": "lora", "dataset": "ds-000000000000",
                   "output_model": "out"}, "name"),
    ("/finetune", {"name": "bad", "model": "tiny-chat", "type": "lora", "dataset": "ds-000000000000",
                   "output_model": "out\n"}, "output_model"),
    ("/compression", {"name": "bad\n", "model": "tiny-chat", "strategy": "awq-w4a16", "output_model": "out"},
     "name"),
])
def test_a_trailing_newline_passes_no_name_rule(app, admin, path, body, field):
    tenant = _tenant(app, admin, f"names{abs(hash((path, field))) % 10**8}")
    answer = tenant.post(path, json=body)
    assert answer.status_code == 400 and answer.json()["error_code"] == "MaaS.0400", answer.text
    assert answer.json()["error_msg"].startswith(f"{field}: Value error, "), answer.text


def test_a_label_with_a_trailing_newline_gets_the_documented_400(app, admin):
    tenant = _tenant(app, admin, "labels")
    answer = tenant.post("/keys", json={"label": "bad\n", "description": "d"})
    assert (answer.status_code, answer.json()) == (400, {
        "error_code": "MaaS.0400", "error_msg": "label: Value error, label must be 1-100 characters of A-Z a-z 0-9 _ -"})
    assert [k["label"] for k in tenant.get("/keys").json()] == ["own"]
    project = admin.post("/projects", json={"id": "newline\n"})
    assert project.status_code == 400 and project.json()["error_code"] == "MaaS.0400"
