"""Custom endpoints (spec §4.4) and projects: rules with exact bodies, isolation between projects, limits
that apply to the next request, disable/enable/delete with confirmation words, and the CLI."""

from __future__ import annotations

import uuid

import httpx
import pytest

PROJECT = "eps"
EMBED = "all-minilm-l6-v2"


@pytest.fixture(scope="module")
def eps(platform):
    """The project PROJECT with a key of its own; the embedding preset commercial (rpm 500, tpm 50 000) and
    activated by PROJECT (activation is permanent: test_endpoint_needs_an_activated_commercial_service uses a
    project of its own)."""
    admin = platform.admin()
    assert admin.post("/projects", json={"id": PROJECT, "name": "Endpoints"}).status_code in (201, 409)
    key = admin.post(f"/{PROJECT}/keys", json={"label": "eps", "description": "endpoint tests"}).json()["key"]
    assert admin.put(f"/presets/{EMBED}", json={"kind": "commercial", "rpm": 500, "tpm": 50_000}).status_code == 200
    assert admin.post(f"/{PROJECT}/presets/activate", json={}).status_code == 200  # all commercial presets
    yield {"admin": admin, "key": key}
    admin.put(f"/presets/{EMBED}", json={"kind": "free"})


def _bad(response: httpx.Response, status: int, code: str, fragment: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error_code"] == code and fragment in body["error_msg"], body


def _embed(platform, key: str, model: str) -> httpx.Response:
    return httpx.post(platform.base_url + "/v1/embeddings", json={"model": model, "input": "hi"}, timeout=60,
                      headers={"Authorization": f"Bearer {key}"})


def test_endpoint_needs_an_activated_commercial_service(platform, eps):
    admin, fresh = eps["admin"], f"eps-{uuid.uuid4().hex[:8]}"  # a project that has activated nothing yet
    assert admin.post("/projects", json={"id": fresh}).status_code == 201
    _bad(admin.post(f"/{fresh}/endpoints", json={"name": "e0", "service": EMBED}), 400, "MaaS.0400",
         f"Activate the commercial service '{EMBED}' first.")
    _bad(admin.post(f"/{fresh}/endpoints", json={"name": "e0", "service": "tiny-chat"}), 400, "MaaS.0400",
         "Custom endpoints front commercial services, not free ones.")
    _bad(admin.post(f"/{fresh}/endpoints", json={"name": "e0", "service": "nope"}), 404, "MaaS.0404",
         "Service 'nope' does not exist.")
    assert admin.post(f"/{fresh}/presets/activate", json={}).status_code == 200  # all commercial presets
    assert admin.post(f"/{fresh}/endpoints", json={"name": "e0", "service": EMBED}).status_code == 201


@pytest.mark.parametrize("body, fragment", [
    ({"name": "bad name!"}, "name must be 1-64 letters"),
    ({"name": "x" * 65}, "name must be 1-64 letters"),
    ({"name": ""}, "name must be 1-64 letters"),
    ({"name": "ok", "description": "d" * 257}, "at most 256 characters"),
    ({"name": "ok", "rpm": 0}, "greater than 0"),
    ({"name": "ok", "tpm": -5}, "greater than 0"),
    ({"name": "ok", "rpm": 501}, "rpm 501 exceeds the model's limit of 500 for this project."),
    ({"name": "ok", "tpm": 50_001}, "tpm 50001 exceeds the model's limit of 50000 for this project."),
    ({"name": "ok", "color": "red"}, "Extra inputs are not permitted"),
])
def test_endpoint_create_rules(eps, body, fragment):
    _bad(eps["admin"].post(f"/{PROJECT}/endpoints", json={"service": EMBED, **body}), 400, "MaaS.0400", fragment)


def test_lifecycle_limits_and_isolation(platform, eps):
    admin, key = eps["admin"], eps["key"]
    created = admin.post(f"/{PROJECT}/endpoints", json={"name": "接入点-1", "service": EMBED, "rpm": 2,
                                                         "description": "CJK names are fine"})
    assert created.status_code == 201, created.text
    view = created.json()
    assert (view["rpm"], view["tpm"], view["status"], view["service"]) == (2, 50_000, "in_use", EMBED)
    # Called by its name; limits are its own.
    assert [_embed(platform, key, "接入点-1").status_code for _ in range(3)] == [200, 200, 429]
    # A limit change applies to the next request.
    assert admin.patch(f"/{PROJECT}/endpoints/接入点-1", json={"rpm": 5}).status_code == 200
    assert _embed(platform, key, "接入点-1").status_code == 200
    # The service it fronts never changes.
    _bad(admin.patch(f"/{PROJECT}/endpoints/接入点-1", json={"service": "tiny-chat"}), 400, "MaaS.0400",
         "Extra inputs are not permitted")
    # Listed by /v1/models for its project only; another project's key gets "does not exist".
    listed = httpx.get(platform.base_url + "/v1/models", headers={"Authorization": f"Bearer {key}"}).json()
    assert "接入点-1" in [m["id"] for m in listed["data"]]
    stranger = platform.new_key()["key"]
    listed = httpx.get(platform.base_url + "/v1/models", headers={"Authorization": f"Bearer {stranger}"}).json()
    assert "接入点-1" not in [m["id"] for m in listed["data"]]
    answer = _embed(platform, stranger, "接入点-1")
    assert (answer.status_code, answer.json()["message"]) == (404, "The model `接入点-1` does not exist.")
    # A stranger cannot manage the project either.
    forbidden = httpx.get(platform.base_url + f"/api/v1/{PROJECT}/endpoints",
                          headers={"Authorization": f"Bearer {stranger}"})
    _bad(forbidden, 403, "MaaS.0403", f"This key has no access to project '{PROJECT}'.")
    # Disable needs YES; a disabled endpoint cannot be called; enable brings it back.
    _bad(admin.post(f"/{PROJECT}/endpoints/接入点-1/disable", json={}), 400, "MaaS.0400", "confirmation text YES")
    assert admin.post(f"/{PROJECT}/endpoints/接入点-1/disable", json={"confirm": "YES"}).json()["status"] == "disabled"
    refused = _embed(platform, key, "接入点-1")
    assert (refused.status_code, refused.json()["error_code"]) == (401, "ModelArts.81004")
    assert admin.post(f"/{PROJECT}/endpoints/接入点-1/enable").json()["status"] == "in_use"
    assert _embed(platform, key, "接入点-1").status_code == 200
    # Delete needs DELETE; the name can never be used again.
    _bad(admin.delete(f"/{PROJECT}/endpoints/接入点-1"), 400, "MaaS.0400", "confirmation text DELETE")
    assert admin.delete(f"/{PROJECT}/endpoints/接入点-1", params={"confirm": "DELETE"}).status_code == 204
    assert _embed(platform, key, "接入点-1").status_code == 404
    _bad(admin.post(f"/{PROJECT}/endpoints", json={"name": "接入点-1", "service": EMBED}), 409, "MaaS.0409",
         "names of deleted endpoints cannot be reused")


def test_patch_refuses_unknown_fields_and_changes_nothing(eps):
    admin = eps["admin"]
    created = admin.post(f"/{PROJECT}/endpoints", json={"name": "strict-patch", "service": EMBED, "rpm": 3})
    assert created.status_code == 201, created.text
    refused = admin.patch(f"/{PROJECT}/endpoints/strict-patch", json={"rpm": 7, "color": "red"})
    assert (refused.status_code, refused.json()) == (400, {"error_code": "MaaS.0400",
                                                           "error_msg": "color: Extra inputs are not permitted"})
    assert admin.get(f"/{PROJECT}/endpoints/strict-patch").json()["rpm"] == 3  # not even the known field


def test_at_most_ten_live_endpoints_and_the_cli(platform, eps):
    admin = eps["admin"]
    live = len(admin.get(f"/{PROJECT}/endpoints").json())
    for i in range(10 - live):
        assert admin.post(f"/{PROJECT}/endpoints", json={"name": f"many-{i}", "service": EMBED}).status_code == 201
    _bad(admin.post(f"/{PROJECT}/endpoints", json={"name": "eleventh", "service": EMBED}), 400, "MaaS.0400",
         "At most 10 custom endpoints can exist at once")
    listed = platform.maas_json("endpoints", "list", "--project", PROJECT)
    assert len(listed) == 10 and {e["status"] for e in listed} == {"in_use"}
    got = platform.maas_json("endpoints", "get", "many-0", "--project", PROJECT)
    assert got["name"] == "many-0" and got["rpm"] == 500
    refused = platform.maas("endpoints", "delete", "many-0", "--project", PROJECT, check=False)
    assert refused.returncode == 1 and "confirmation text DELETE" in refused.stderr
    platform.maas("endpoints", "delete", "many-0", "--project", PROJECT, "--confirm", "DELETE")
    assert len(platform.maas_json("endpoints", "list", "--project", PROJECT)) == 9


def test_projects_api_and_cli(platform):
    created = platform.maas_json("projects", "create", "proj-cli", "--name", "From the CLI")
    assert created["id"] == "proj-cli" and created["name"] == "From the CLI"
    assert "proj-cli" in [p["id"] for p in platform.maas_json("projects", "list")]
    bad = platform.admin().post("/projects", json={"id": "Bad Id"})
    _bad(bad, 400, "MaaS.0400", "id must be 1-64 of a-z 0-9 _ -")
    _bad(platform.admin().post("/projects", json={"id": "proj-cli"}), 409, "MaaS.0409", "already exists")
    refused = platform.maas("projects", "delete", "proj-cli", check=False)
    assert refused.returncode == 1 and "DELETE" in refused.stderr
    platform.maas("projects", "delete", "proj-cli", "--confirm", "DELETE")
    assert "proj-cli" not in [p["id"] for p in platform.maas_json("projects", "list")]


def test_project_create_refuses_unknown_fields(platform):
    refused = platform.admin().post("/projects", json={"id": "proj-strict", "name": "Strict", "color": "red"})
    assert (refused.status_code, refused.json()) == (400, {"error_code": "MaaS.0400",
                                                           "error_msg": "color: Extra inputs are not permitted"})
    assert "proj-strict" not in [p["id"] for p in platform.maas_json("projects", "list")]  # nothing created
