"""API keys: the rules of spec §9.1 through the CLI and the admin REST API, and revocation."""

from __future__ import annotations

import json

import openai
import pytest


def test_create_prints_one_json_document_with_the_secret(platform):
    done = platform.maas("keys", "create", "--label", "json-doc", "--description", "for a script", "--json")
    created = json.loads(done.stdout)  # the whole stdout is one JSON document
    assert created["label"] == "json-doc" and created["description"] == "for a script"
    secret = created["key"]
    assert len(secret) >= 40
    assert created["key_masked"] == secret[:4] + "*" * 8 + secret[-4:]


def test_list_shows_only_the_first_and_last_four(platform):
    created = platform.new_key("masked")
    listed = {row["label"]: row for row in platform.maas_json("keys", "list")}
    row = listed["masked"]
    assert "key" not in row and created["key"] not in json.dumps(listed)
    assert row["key_masked"] == created["key"][:4] + "********" + created["key"][-4:]
    table = platform.maas("keys", "list").stdout
    assert "masked" in table and created["key"] not in table


def test_secret_is_stored_only_as_a_hash(platform):
    from sqlalchemy import create_engine, inspect, text

    created = platform.new_key("hashed")
    engine = create_engine(platform.database_url)
    with engine.connect() as conn:  # every value of every table, as text
        dump = "\n".join(str(row) for table in inspect(engine).get_table_names()
                         for row in conn.execute(text(f"SELECT * FROM {table}")))
    assert created["key"] not in dump
    import hashlib

    assert hashlib.sha256(created["key"].encode()).hexdigest() in dump


RULES = {"label": "label: Value error, label must be 1-100 characters of A-Z a-z 0-9 _ -",
         "description": "description: Value error, description must be 1-100 characters"}


@pytest.mark.parametrize("label,description,field", [
    ("has space", "d", "label"), ("", "d", "label"), ("x" * 101, "d", "label"), ("ok-label", "d" * 101, "description"),
    ("bad!label", "d", "label"), ("é", "d", "label")])
def test_label_and_description_rules(platform, label, description, field):
    response = platform.admin().post("/default/keys", json={"label": label, "description": description})
    assert response.status_code == 400
    assert response.json() == {"error_code": "MaaS.0400", "error_msg": RULES[field]}  # that field, and only it


def test_unknown_fields_are_refused_not_dropped(platform):
    admin = platform.admin()
    response = admin.post("/default/keys", json={"label": "strict-key", "description": "d", "color": "red"})
    assert (response.status_code, response.json()) == (400, {"error_code": "MaaS.0400",
                                                             "error_msg": "color: Extra inputs are not permitted"})
    assert "strict-key" not in [row["label"] for row in admin.get("/default/keys").json()]  # nothing created


def test_limits_hold_exactly_at_the_bounds(platform):
    admin = platform.admin()
    for label, description in (("L" * 100, "d" * 100), ("-_9", "x")):
        response = admin.post("/default/keys", json={"label": label, "description": description})
        assert response.status_code == 201, response.text
        created = response.json()
        secret = created.pop("key")
        assert created == {"id": created["id"], "project_id": "default", "label": label, "description": description,
                           "key_masked": secret[:4] + "*" * 8 + secret[-4:], "created_at": created["created_at"]}
        assert created in admin.get("/default/keys").json()  # stored as sent, not cut at the bound


def test_labels_are_unique(platform):
    platform.new_key("twice")
    done = platform.maas("keys", "create", "--label", "twice", check=False)
    assert done.returncode == 1 and "MaaS.0409" in done.stderr
    assert [r["label"] for r in platform.maas_json("keys", "list")].count("twice") == 1


def test_at_most_30_live_keys_and_deleting_frees_a_slot(platform):
    admin = platform.admin()
    existing = len(admin.get("/default/keys").json())
    for i in range(30 - existing):
        assert admin.post("/default/keys", json={"label": f"fill{i}", "description": "x"}).status_code == 201
    refused = admin.post("/default/keys", json={"label": "one-too-many", "description": "x"})
    assert refused.status_code == 400 and "At most 30" in refused.json()["error_msg"]
    assert len(admin.get("/default/keys").json()) == 30  # nothing lost
    platform.maas("keys", "delete", "fill0")
    assert admin.post("/default/keys", json={"label": "one-too-many", "description": "x"}).status_code == 201
    for row in admin.get("/default/keys").json():  # leave room for the other tests
        if row["label"].startswith("fill") or row["label"] == "one-too-many":
            assert admin.delete(f"/default/keys/{row['id']}").status_code == 204


def test_delete_takes_effect_on_the_very_next_request(platform):
    created = platform.new_key("short-lived")
    client = platform.client(created["key"])
    assert client.models.list().data
    platform.maas("keys", "delete", created["id"])
    with pytest.raises(openai.AuthenticationError) as refused:
        client.models.list()
    assert refused.value.status_code == 401
    assert refused.value.response.json() == {"error_code": "ModelArts.81003",
                                             "error_msg": "Invalid authorization header."}


def test_control_plane_auth_admin_or_own_project(platform, api_key):
    import httpx

    url = platform.base_url + "/api/v1/default/keys"
    own = {"Authorization": f"Bearer {api_key}"}
    assert httpx.get(url).json()["error_code"] == "ModelArts.81002"
    assert httpx.get(url, headers={"Authorization": "Bearer sk-not-a-key"}).json()["error_code"] == "ModelArts.81003"
    # A project's API key manages its own project, and nothing else; admin routes need the admin key.
    assert httpx.get(url, headers=own).status_code == 200
    platform.admin().post("/projects", json={"id": "keys-other"})
    other = httpx.get(platform.base_url + "/api/v1/keys-other/keys", headers=own)
    assert (other.status_code, other.json()["error_code"]) == (403, "MaaS.0403")
    assert httpx.get(platform.base_url + "/api/v1/projects", headers=own).status_code == 401
    assert platform.admin().get("/default/keys").status_code == 200
    assert platform.admin().get("/no-such-project/keys").status_code == 404
