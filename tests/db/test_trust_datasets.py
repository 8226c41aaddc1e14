"""One tenant against everyone, through the control plane's real HTTP app (cluster.app on uvicorn, on SQLite; no
Ray: the accounting actor's reload is a no-op) with a tenant's own key or none (issue 26):
- item 6: a 200 MiB dataset of `{}` lines, uploaded and named by a job, is refused with its first 100 errors while
  this process (the control plane's) grows by less than 200 MB: validation streams, stops at 100 errors, and runs
  in a child process capped at MAAS_DATASET_CHECK_MEMORY_MB;
- item 10: a key is checked before a body is read (a 1 GiB upload without a key, or with another project's, is
  answered after a few KiB of it), and a replica reads MAAS_MAX_LARGE_BODIES large bodies at once;
- item 9: the storage and upload-count quotas, the dataset list/delete API, and the expiry of unused uploads.
The same as a black box against the running platform: tests/e2e/test_trust_datasets.py."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from cluster.settings import get_settings
from cluster.state.db import CompressionJob, ModelVersion, MyModel, TuningJob, session_scope
from tests.bodies import BOUNDARY, GiB, MiB, PeakRss, multipart_head, send_until_answered, upload, write_repeated
from tests.helpers import free_port

pytestmark = pytest.mark.db
ADMIN = "admin-trust-datasets"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """The control plane's app on uvicorn in this process; its base URL (…/api/v1)."""
    import uvicorn

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MAAS_HOME", str(tmp_path_factory.mktemp("trust-datasets")))
        patch.delenv("MAAS_DATABASE_URL", raising=False)
        patch.delenv("MAAS_STORAGE", raising=False)
        patch.setenv("MAAS_ADMIN_KEY", ADMIN)
        patch.setenv("MAAS_MAX_LARGE_BODIES", "2")
        get_settings.cache_clear()
        import cluster.guard as guard
        import cluster.keys.router as keys_router
        from cluster.app import app, prepare

        async def nothing(*_args, **_kwargs):
            return None

        patch.setattr(keys_router, "on_every_shard", nothing)
        patch.setattr(guard, "LARGE_BODY_WAIT_S", 0.5)
        prepare(["tiny-chat"])
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}/api/v1"
        server.should_exit = True
        thread.join(10)
    get_settings.cache_clear()


@pytest.fixture(scope="module")
def admin(base) -> httpx.Client:
    return httpx.Client(base_url=base, timeout=120, headers={"Authorization": f"Bearer {ADMIN}"})


def tenant(base: str, admin: httpx.Client, project: str) -> httpx.Client:
    """A new project and a client holding its own key (not the admin's)."""
    assert admin.post("/projects", json={"id": project}).status_code == 201
    key = admin.post(f"/{project}/keys", json={"label": "own", "description": "d"}).json()["key"]
    return httpx.Client(base_url=f"{base}/{project}", timeout=600, headers={"Authorization": f"Bearer {key}"})


def job(dataset: str, name: str = "hostile") -> dict:
    return {"name": name, "model": "tiny-chat", "type": "lora", "dataset": dataset, "output_model": f"{name}-out"}


# -- item 6 ------------------------------------------------------------------------------------------------------
def test_a_200_mib_dataset_of_empty_objects_is_refused_with_its_first_100_errors_in_bounded_memory(
        base, admin, tmp_path):
    hostile = tenant(base, admin, "hostile")
    warm = tmp_path / "warm.jsonl"  # the first upload and job import what they need: not the file's doing
    warm.write_text("{}\n")
    assert hostile.post("/finetune", json=job(upload(hostile, warm).json()["id"], "warm")).status_code == 201
    path = write_repeated(tmp_path / "empty-objects.jsonl", b"{}\n", 200 * MiB)
    with PeakRss() as rss:
        stored = upload(hostile, path)
        answer = hostile.post("/finetune", json=job(stored.json()["id"]))
    assert stored.status_code == 201 and stored.json()["bytes"] == path.stat().st_size > 199 * MiB
    assert answer.status_code == 201 and answer.json()["status"] == "failed" and answer.json()["runs"] == 0
    assert answer.json()["status_reason"].splitlines() == [
        "dataset validation failed", "dataset is invalid (validation stopped at the first 100 errors):",
        *(f"  line {n}, {field}: Field required" for n in range(1, 51) for field in ("instruction", "output"))]
    assert rss.growth < 200 * MiB, f"the control plane's process grew by {rss.growth / MiB:.0f} MiB"


# -- item 10 -----------------------------------------------------------------------------------------------------
NO_HEADER = {"error_code": "ModelArts.81002", "error_msg": "Failed to get the authorization header."}
UNKNOWN_KEY = {"error_code": "ModelArts.81003", "error_msg": "Invalid authorization header."}


@pytest.fixture(scope="module")
def outsider(base, admin) -> str:
    """A key of another project than `default`."""
    return tenant(base, admin, "outsider").headers["Authorization"]


@pytest.mark.parametrize("path, key, status, body", [
    ("/api/v1/default/datasets", None, 400, NO_HEADER),
    ("/api/v1/default/datasets", "Bearer sk-nobody", 401, UNKNOWN_KEY),
    ("/api/v1/default/datasets", "outsider", 403,
     {"error_code": "MaaS.0403", "error_msg": "This key has no access to project 'default'."}),
    ("/api/v1/nowhere/datasets", f"Bearer {ADMIN}", 404,
     {"error_code": "MaaS.0404", "error_msg": "Project 'nowhere' does not exist."}),
    ("/api/v1/presets/tiny-chat/freeze", "outsider", 401, UNKNOWN_KEY),  # an admin route, a project's key
])
def test_a_body_is_read_only_for_a_key_that_may_send_it(base, outsider, path, key, status, body):
    """The answers the routes gave before, now before the body: after a few KiB of a 1 GiB upload."""
    headers = {"Authorization": outsider if key == "outsider" else key} if key else {}
    datasets = get_settings().storage_dir / "datasets"
    before = sorted(datasets.rglob("*")) if datasets.exists() else []
    answer, answer_body, sent = send_until_answered(base, path, headers, GiB)
    assert (answer, answer_body) == (status, body)
    assert sent < 8 * MiB, f"{sent / MiB:.1f} MiB of the 1 GiB were sent before the answer"
    assert (sorted(datasets.rglob("*")) if datasets.exists() else []) == before


def test_a_replica_reads_a_bounded_number_of_large_bodies_at_once(base, admin, tmp_path):
    """MAAS_MAX_LARGE_BODIES=2 here: two uploads that send slowly hold both places, the third is answered 503
    (after LARGE_BODY_WAIT_S) without being read; once they end, uploads go through again."""
    crowd = tenant(base, admin, "crowd")
    host, port = base.removeprefix("http://").split("/")[0].split(":")
    slow = []
    for _ in range(2):
        sock = socket.create_connection((host, int(port)), timeout=30)
        sock.sendall(("\r\n".join([
            "POST /api/v1/crowd/datasets HTTP/1.1", f"Host: {host}",
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}", f"Content-Length: {100 * MiB}",
            crowd.headers["Authorization"].join(["Authorization: ", ""])]) + "\r\n\r\n").encode()
            + multipart_head("slow.jsonl") + b"{}\n" * MiB)
        slow.append(sock)
    time.sleep(0.5)  # both are being read
    small = tmp_path / "small.jsonl"
    small.write_bytes(b'{"instruction": "q", "output": "a"}\n' * 40_000)  # 1.4 MiB: a large body
    refused = upload(crowd, small)
    assert refused.status_code == 503 and refused.headers["retry-after"] == "60"
    assert refused.json() == {"error_code": "MaaS.0503", "error_msg": "The platform is starting or the model is "
                              "not ready: too many large requests (dataset uploads) at once on this replica; try "
                              "again in a minute"}
    assert crowd.get("/datasets").json() == []  # small bodies still pass
    for sock in slow:
        sock.close()
    deadline = time.time() + 10
    while (answer := upload(crowd, small)).status_code == 503 and time.time() < deadline:
        time.sleep(0.2)
    assert answer.status_code == 201, answer.text


# -- item 9 ------------------------------------------------------------------------------------------------------
def _reading_job(project: str, name: str, dataset_path: str, status: str, table=TuningJob) -> None:
    """A job row that names an upload, as a create and the job-sync thread leave it."""
    settings, job_id = get_settings(), f"{'ft' if table is TuningJob else 'cp'}-{project}-{name}"
    common = dict(id=job_id, project_id=project, name=name, model_ref="tiny-chat", base_model="tiny-chat",
                  params={}, output_model=f"{name}-out", status=status, runs=1, submission_id=f"{job_id}-run1",
                  dataset_path=dataset_path, dataset_format="alpaca")
    if table is TuningJob:
        row = TuningJob(**common, job_type="lora", output_dir=str(settings.finetune_dir() / project / job_id))
    else:
        row = CompressionJob(**common, strategy="awq-w4a16", source_path="/x",
                             output_dir=str(settings.compression_dir(project) / job_id))
    with session_scope(settings.database_url) as session:
        session.add(row)


def test_uploads_are_listed_and_deleted_but_not_while_a_job_may_read_them(base, admin, tmp_path):
    owner, outsider = tenant(base, admin, "lister"), tenant(base, admin, "peeker")
    data = tmp_path / "qa.jsonl"
    data.write_text('{"instruction": "q", "output": "a"}\n')
    first, second = upload(owner, data).json(), upload(owner, data).json()
    listed = owner.get("/datasets").json()
    assert [(d["id"], d["name"], d["bytes"], d["used_by"]) for d in listed] == [
        (first["id"], "qa.jsonl", data.stat().st_size, []), (second["id"], "qa.jsonl", data.stat().st_size, [])]
    assert listed[0]["expires_at"] == listed[0]["last_used_at"] + 30 * 86400
    assert outsider.get(f"{base}/lister/datasets").status_code == 403  # another project's key
    _reading_job("lister", "paused", first["path"], "stopped")  # a stopped tuning job may continue: it reads it
    busy = owner.delete(f"/datasets/{first['id']}", params={"confirm": "DELETE"})
    assert (busy.status_code, busy.json()["error_msg"]) == (
        409, f"Dataset {first['id']!r} may still be read by job(s) paused; delete or finish them first.")
    assert owner.get("/datasets").json()[0]["used_by"] == ["paused"]
    assert owner.delete(f"/datasets/{second['id']}").status_code == 400  # the confirmation word is needed
    assert owner.delete(f"/datasets/{second['id']}", params={"confirm": "DELETE"}).status_code == 204
    assert [d["id"] for d in owner.get("/datasets").json()] == [first["id"]]
    gone = owner.delete(f"/datasets/{second['id']}", params={"confirm": "DELETE"})
    assert (gone.status_code, gone.json()["error_msg"]) == (404, f"Dataset {second['id']!r} does not exist.")


def test_one_storage_quota_over_uploads_job_outputs_and_model_versions(base, admin, tmp_path):
    owner = tenant(base, admin, "hoarder")
    assert admin.put("/projects/hoarder/quotas", json={"storage_mb": 3, "datasets": 3}).json()["storage_mb"] == 3
    two = write_repeated(tmp_path / "two.jsonl", b'{"instruction": "q", "output": "a"}\n', 2 * MiB)
    kept = upload(owner, two)
    assert kept.status_code == 201
    over = upload(owner, two)  # 2 + 2 MiB > 3 MiB: refused, and nothing of it is kept
    assert over.status_code == 400 and over.json()["error_msg"].startswith(
        "Over the project's storage quota: at most 3 MiB over dataset uploads, job outputs and model versions")
    assert [d["id"] for d in owner.get("/datasets").json()] == [kept.json()["id"]]
    outputs = get_settings().finetune_dir() / "hoarder" / "ft-old"  # an earlier job's checkpoints count too
    outputs.mkdir(parents=True)
    write_repeated(outputs / "checkpoint.bin", b"\0", MiB + MiB // 2)
    full = owner.post("/finetune", json=job(kept.json()["id"], "more"))
    assert full.status_code == 400 and "storage quota" in full.json()["error_msg"]
    one = tmp_path / "one.jsonl"
    one.write_text('{"instruction": "q", "output": "a"}\n')
    assert upload(owner, one).status_code == 400  # full: even a small upload
    (outputs / "checkpoint.bin").unlink()
    weights = get_settings().models_dir / "my" / "mdl-hoarder" / "v1"  # and so do its models' versions
    write_repeated(weights.mkdir(parents=True) or weights / "model.safetensors", b"\0", MiB + MiB // 2)
    with session_scope(get_settings().database_url) as session:
        session.add(MyModel(id="mdl-hoarder", project_id="hoarder", name="kept", base_model="tiny-chat"))
        session.flush()
        session.add(ModelVersion(id="mv-hoarder", model_id="mdl-hoarder", version=1, path=str(weights)))
    assert upload(owner, one).status_code == 400
    (weights / "model.safetensors").unlink()
    assert upload(owner, one).status_code == 201 and upload(owner, one).status_code == 201
    counted = upload(owner, one)  # the fourth upload: over the count quota of 3
    assert counted.status_code == 400 and counted.json()["error_msg"].startswith("Over the project's quota: at "
                                                                                 "most 3 dataset uploads")


def test_uploads_no_job_named_for_the_expiry_are_deleted(base, admin, tmp_path):
    from cluster.datasets import service

    owner = tenant(base, admin, "forgetful")
    data = tmp_path / "qa.jsonl"
    data.write_text('{"instruction": "q", "output": "a"}\n')
    old, read = upload(owner, data).json(), upload(owner, data).json()
    broken = tmp_path / "broken.jsonl"
    broken.write_text("{}\n")  # its job fails validation, without Ray: it is named all the same
    named = upload(owner, broken).json()
    month_ago = time.time() - 31 * 86400
    for stored in (old, read, named):
        os.utime(Path(stored["path"]).parent, (month_ago, month_ago))
    _reading_job("forgetful", "calibrating", read["path"], "running", table=CompressionJob)
    assert owner.post("/finetune", json=job(named["id"], "fresh")).json()["status"] == "failed"  # still a use
    with session_scope(get_settings().database_url) as session:
        assert service.expire_unused(session) == [old["id"]]
    assert sorted(d["id"] for d in owner.get("/datasets").json()) == sorted([read["id"], named["id"]])
