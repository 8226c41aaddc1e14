"""A hostile project's key against the running platform: it cannot read the server's files, stop other
projects' services, import what an admin did not allow, read every tenant's metrics, or freeze the API with
a huge body; a project created again under a deleted id starts empty; bodies that can never run get a 400.
Each test failed on the code before the fix it names."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

pytestmark = pytest.mark.e2e
PROJECT = "evil"
CHAT = "tiny-chat"


@pytest.fixture(scope="module")
def evil(platform):
    """A fresh project's key, and a client of that project's REST API."""
    with platform.admin() as admin:
        assert admin.post("/projects", json={"id": PROJECT}).status_code in (201, 409)
        key = admin.post(f"/{PROJECT}/keys", json={"label": "evil", "description": "evil"}).json()["key"]
    with httpx.Client(base_url=f"{platform.base_url}/api/v1/{PROJECT}", timeout=60,
                      headers={"Authorization": f"Bearer {key}"}) as client:
        yield key, client


def _job(dataset: str) -> dict:
    return {"name": "x1", "model": CHAT, "type": "lora", "dataset": dataset, "format": "csv", "output_model": "o1"}


def test_a_fine_tune_cannot_make_the_server_read_its_own_files(platform, evil):
    """Before: 201, and the job's status_reason held /proc/self/environ (or the admin key)."""
    _key, client = evil
    for path in ("/proc/self/environ", str(platform.home / "credentials"), str(platform.home / "maas.db"),
                 "/nonexistent/file.csv", "relative.csv"):
        refused = client.post("/finetune", json=_job(path))
        assert refused.status_code == 403, (path, refused.text)
        assert refused.json()["error_code"] == "MaaS.0403"
        assert platform.admin_key not in refused.text and str(platform.home) not in refused.text
    traversal = client.post("/finetune", json=_job(f"ds-../../default/{'0' * 12}"))
    assert traversal.status_code == 404 and traversal.json()["error_code"] == "MaaS.0404"
    assert client.get("/finetune").json() == []  # no job was created


def test_a_bad_webhook_url_is_refused_and_the_reconciler_keeps_reconciling(platform, evil):
    """Before: the service was created, and the reconciler thread died on httpx.InvalidURL (every project's
    services stayed Pending until a restart)."""
    _key, client = evil
    body = {"name": "boom", "model": CHAT, "notify_events": ["Pending", "Deploying"]}
    invalid = client.post("/services", json=body | {"notify_url": "http://h:x/"})
    assert invalid.status_code == 400 and "notify_url is not a valid URL" in invalid.json()["error_msg"]
    for url in ("http://169.254.169.254/latest/meta-data/", "http://10.0.0.1:6379/", "http://[::1]:22/"):
        private = client.post("/services", json=body | {"notify_url": url})
        assert private.status_code == 400, url
        assert "private, loopback or link-local" in private.json()["error_msg"]
    assert client.get("/services").json() == []
    asked = time.time()
    with platform.admin() as admin:
        deadline = time.time() + 30
        while ((loop := admin.get("/health").json()["loops"]["reconciler"])["last_success"] or 0) < asked:
            assert time.time() < deadline, loop
            time.sleep(0.5)


def test_my_model_weights_come_only_from_import_roots_and_no_link_leaves_them(platform, evil, tmp_path):
    """Before: any readable directory was copied, following links (a tokenizer.json linking to the
    credentials file was copied into the project's model)."""
    _key, client = evil
    outside = client.post("/my-models", json={"name": "steal", "base_model": CHAT, "path": str(platform.home)})
    assert outside.status_code == 403 and "MAAS_IMPORT_ROOTS" in outside.json()["error_msg"]
    weights = tmp_path / "weights"  # inside the tests' import root
    weights.mkdir()
    (weights / "tokenizer.json").symlink_to(platform.home / "credentials")
    linked = client.post("/my-models", json={"name": "steal", "base_model": CHAT, "path": str(weights)})
    assert linked.status_code == 400 and "link that leaves" in linked.json()["error_msg"]
    assert client.get("/my-models").json() == []


def test_metrics_are_for_the_admin_key_only(platform, evil):
    """Before: /metrics answered anyone, with every project's ids and callers' raw model strings."""
    key, _client = evil
    metrics = platform.base_url + "/metrics"
    missing = httpx.get(metrics)
    assert missing.status_code == 400 and missing.json()["error_code"] == "ModelArts.81002"
    tenant = httpx.get(metrics, headers={"Authorization": f"Bearer {key}"})
    assert tenant.status_code == 401 and tenant.json()["error_code"] == "ModelArts.81003"
    # A caller's made-up model name never becomes a label value.
    with pytest.raises(openai.NotFoundError):
        platform.client(key).chat.completions.create(model="no-such-model-4f1c", messages=[{"role": "user",
                                                                                             "content": "hi"}])
    deadline = time.time() + 30
    while True:
        admin = httpx.get(metrics, headers={"Authorization": f"Bearer {platform.admin_key}"})
        assert admin.status_code == 200
        if f'project="{PROJECT}"' in admin.text or time.time() > deadline:
            break
        time.sleep(0.5)
    assert f'project="{PROJECT}"' in admin.text and "no-such-model-4f1c" not in admin.text


def test_the_control_plane_refuses_a_huge_body_before_reading_it(platform):
    """Before: the control plane read a body of any size before it checked the key. The key is checked first
    (cluster/guard.py), then the size, both before the body is read."""
    huge = b"{" + b" " * (9 * 2**20) + b"}"
    anonymous = httpx.post(platform.base_url + "/api/v1/projects", content=huge,
                           headers={"Content-Type": "application/json"}, timeout=60)
    assert anonymous.status_code == 400 and anonymous.json()["error_code"] == "ModelArts.81002"
    admin = httpx.post(platform.base_url + "/api/v1/projects", content=huge, timeout=60,
                       headers={"Content-Type": "application/json", "Authorization": f"Bearer {platform.admin_key}"})
    assert admin.status_code == 413 and admin.json()["error_code"] == "MaaS.0413"


def test_a_project_created_again_under_a_deleted_id_starts_empty(platform):
    """Before: the new project inherited the old one's usage records and events."""
    with platform.admin() as admin:
        assert admin.post("/projects", json={"id": "reborn"}).status_code == 201
        key = admin.post("/reborn/keys", json={"label": "k", "description": "k"}).json()
        platform.client(key["key"]).chat.completions.create(model=CHAT, max_tokens=2,
                                                            messages=[{"role": "user", "content": "hi"}])
        deadline = time.time() + 30
        while admin.get("/reborn/usage/summary").json()["totals"]["calls"] < 1:
            assert time.time() < deadline
            time.sleep(0.3)
        assert admin.delete(f"/reborn/keys/{key['id']}").status_code == 204
        assert admin.delete("/projects/reborn", params={"confirm": "DELETE"}).status_code == 204
        assert admin.post("/projects", json={"id": "reborn"}).status_code == 201
        assert admin.get("/reborn/usage/summary").json()["totals"]["calls"] == 0


@pytest.mark.parametrize("bad", [{"max_tokens": -1}, {"max_tokens": 0}, {"n": 0},
                                 {"messages": [{"role": "wizard", "content": "hi"}]}])
def test_a_chat_body_that_can_never_run_gets_a_400(platform, evil, bad):
    """Before: a negative max_tokens reserved a negative amount of TPM until settled; "wizard" was a role."""
    key, _client = evil
    body = {"model": CHAT, "messages": [{"role": "user", "content": "hi"}]} | bad
    answer = httpx.post(platform.base_url + "/v1/chat/completions", json=body,
                        headers={"Authorization": f"Bearer {key}"}, timeout=60)
    assert answer.status_code == 400 and answer.json()["object"] == "error", answer.text


def test_quotas_bound_what_a_project_can_ask_for(platform, evil):
    """Before: any project could ask for 50 services of 16 instances, or a job with 10,000 workers."""
    key, client = evil
    own = client.get(f"{platform.base_url}/api/v1/projects/{PROJECT}/quotas")
    assert own.status_code == 200 and own.json()["workers"] == 4 and own.json()["overrides"] == []
    raise_own = client.put(f"{platform.base_url}/api/v1/projects/{PROJECT}/quotas", json={"instances": 100})
    assert raise_own.status_code == 401 and raise_own.json()["error_code"] == "ModelArts.81003"
    with platform.admin() as admin:
        assert admin.put(f"/projects/{PROJECT}/quotas", json={"instances": 1}).json()["instances"] == 1
    too_big = client.post("/services", json={"name": "big", "model": CHAT, "instances": 2})
    assert too_big.status_code == 400 and "at most 1 engine instances" in too_big.json()["error_msg"]
    workers = client.post("/finetune", json=_job("ds-000000000000") | {"workers": 10_000})
    assert workers.status_code == 400 and "at most 4 Ray Train workers" in workers.json()["error_msg"]
    assert client.get("/services").json() == [] and client.get("/finetune").json() == []
    cli = platform.maas_json("projects", "quotas", PROJECT)
    assert cli["instances"] == 1 and cli["overrides"] == ["instances"]
