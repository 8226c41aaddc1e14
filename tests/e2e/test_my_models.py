"""My models (spec §6.1) on the session's platform: a base catalog model plus a Hugging Face-format folder,
copied into the platform; Modelarts.6206 for a config.json that does not describe the base's family; name and
description rules; at most 10 automatically numbered versions; no deletion while a service uses a version;
the CLI; project isolation. (`resolve_version` and `register_version` without a platform:
tests/db/test_my_models.py.)"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import httpx
import pytest
from sqlalchemy import delete

from cluster.state.db import Service, session_scope
from tests.helpers import STRUCTURE_ERROR, lora_adapter

PROJECT, OTHER = "mym", "mym-other"


# -- the platform ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mm(platform, tmp_path_factory):
    admin = platform.admin()
    for project in (PROJECT, OTHER):
        assert admin.post("/projects", json={"id": project, "name": project}).status_code in (201, 409)
    other_key = admin.post(f"/{OTHER}/keys", json={"label": "mm", "description": "my-model tests"}).json()["key"]
    root = tmp_path_factory.mktemp("my-models")

    def weights(name: str) -> Path:
        """A fresh copy of the built tiny-chat folder, as a user would upload."""
        folder = root / f"{name}-{uuid.uuid4().hex[:6]}"
        shutil.copytree(platform.home / "models" / "tiny-chat", folder)
        return folder

    yield {"admin": admin, "weights": weights, "root": root,
           "other": httpx.Client(base_url=platform.base_url + "/api/v1", timeout=60,
                                 headers={"Authorization": f"Bearer {other_key}"})}
    for project in (PROJECT, OTHER):  # the model store may be a cache shared between sessions
        for model in admin.get(f"/{project}/my-models").json():
            admin.delete(f"/{project}/my-models/{model['id']}", params={"confirm": "DELETE"})


def _create(mm, name: str, path: Path | str, **extra) -> httpx.Response:
    return mm["admin"].post(f"/{PROJECT}/my-models", json={"name": name, "base_model": "tiny-chat",
                                                           "path": str(path)} | extra)


def _bad(response: httpx.Response, status: int, code: str, fragment: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error_code"] == code and fragment in body["error_msg"], body


def test_create_copies_the_weights(platform, mm):
    source = mm["weights"]("upload")
    created = _create(mm, "我的模型-1.0", source, description="微调后的 tiny-chat")
    assert created.status_code == 201, created.text
    model = created.json()
    assert model["id"].startswith("mdl-") and len(model["id"]) == 16
    assert (model["name"], model["base_model"], model["description"]) == ("我的模型-1.0", "tiny-chat", "微调后的 tiny-chat")
    [version] = model["versions"]
    assert (version["version"], version["kind"], version["source"], version["status"]) == (1, "full", "upload",
                                                                                            "created")
    assert Path(version["path"]) == platform.home / "models" / "my" / model["id"] / "v1"
    shutil.rmtree(source)  # the user's folder may go: the platform has its own copy
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in Path(version["path"]).iterdir()}
    assert mm["admin"].get(f"/{PROJECT}/my-models/我的模型-1.0").json() == model
    assert mm["admin"].get(f"/{PROJECT}/my-models/{model['id']}").json() == model
    assert model in mm["admin"].get(f"/{PROJECT}/my-models").json()
    _bad(_create(mm, "我的模型-1.0", mm["weights"]("dup")), 409, "MaaS.0409",
         "A model named '我的模型-1.0' already exists in this project.")


def _broken(folder: Path, how: str) -> Path:
    config = folder / "config.json"
    if how == "missing":
        config.unlink()
    elif how == "invalid-json":
        config.write_text('{"model_type": "llama", "architectures": ["LlamaForCausalLM"]')
    elif how == "no-model-type":
        config.write_text(json.dumps({k: v for k, v in json.loads(config.read_text()).items() if k != "model_type"}))
    else:
        field, value = {"model-type": ("model_type", "qwen2"), "architectures": ("architectures", ["BertModel"])}[how]
        config.write_text(json.dumps(json.loads(config.read_text()) | {field: value}))
    return folder


@pytest.mark.parametrize("how", ["missing", "invalid-json", "no-model-type", "model-type", "architectures"])
def test_config_json_must_describe_the_base(mm, how):
    response = _create(mm, f"bad-{how}", _broken(mm["weights"](how), how))
    assert response.status_code == 400 and response.json() == STRUCTURE_ERROR
    assert mm["admin"].get(f"/{PROJECT}/my-models/bad-{how}").status_code == 404
    # Not the base's family either: the tiny-chat folder on the embedding model.
    response = _create(mm, f"bad-base-{how}", mm["weights"]("ok"), base_model="all-minilm-l6-v2")
    assert response.status_code == 400 and response.json() == STRUCTURE_ERROR


@pytest.mark.parametrize("name", ["a", "模型", "A" * 64, "Qwen2.5-7B_ft", "é-model"])
def test_names_the_product_allows(mm, name):
    created = _create(mm, name, mm["weights"]("name"))
    assert created.status_code == 201, created.text
    assert mm["admin"].delete(f"/{PROJECT}/my-models/{created.json()['id']}",
                              params={"confirm": "DELETE"}).status_code == 204


@pytest.mark.parametrize("body, fragment", [
    ({"name": ""}, "name must be 1-64 characters, start with a letter (CJK included)"),
    ({"name": "A" * 65}, "name must be 1-64 characters"),
    ({"name": "1model"}, "name must be 1-64 characters"),
    ({"name": "_model"}, "name must be 1-64 characters"),
    ({"name": "-model"}, "name must be 1-64 characters"),
    ({"name": "my model"}, "name must be 1-64 characters"),
    ({"name": "my/model"}, "name must be 1-64 characters"),
    ({"name": "tiny-chat"}, "name 'tiny-chat' is a catalog model's id; choose another"),
    ({"description": "d" * 101}, "description: String should have at most 100 characters"),
    ({"color": "red"}, "Extra inputs are not permitted"),
])
def test_name_and_description_rules(mm, body, fragment):
    response = mm["admin"].post(f"/{PROJECT}/my-models", json={"name": "ok", "base_model": "tiny-chat",
                                                               "path": "/nonexistent"} | body)
    _bad(response, 400, "MaaS.0400", fragment)


def test_folder_rules(mm):
    folder = mm["weights"]("rules")
    _bad(_create(mm, "rel", "models/tiny-chat"), 400, "MaaS.0400", "path must be an absolute path")
    _bad(_create(mm, "file", folder / "config.json"), 400, "MaaS.0400", "is not a directory")
    _bad(_create(mm, "gone", folder / "nope"), 400, "MaaS.0400", "is not a directory")
    _bad(_create(mm, "nobase", folder, base_model="gpt-9"), 404, "MaaS.0404", "Base model 'gpt-9' does not exist.")
    (folder / "model.safetensors").unlink()
    _bad(_create(mm, "noweights", folder), 400, "MaaS.0400", "has no weight files (*.safetensors or *.bin)")


def test_ten_versions_then_refused(platform, mm):
    admin = mm["admin"]
    model = _create(mm, "versioned", mm["weights"]("v")).json()
    source = mm["weights"]("versions")
    for number in range(2, 11):
        added = admin.post(f"/{PROJECT}/my-models/versioned/versions", json={"path": str(source),
                                                                            "description": f"run {number}"})
        assert added.status_code == 201, added.text
        assert (added.json()["version"], added.json()["description"]) == (number, f"run {number}")
    listed = admin.get(f"/{PROJECT}/my-models/versioned/versions").json()
    assert [v["version"] for v in listed] == list(range(1, 11))
    assert sorted(p.name for p in (platform.home / "models" / "my" / model["id"]).iterdir()) == sorted(
        f"v{n}" for n in range(1, 11))
    _bad(admin.post(f"/{PROJECT}/my-models/versioned/versions", json={"path": str(source)}), 400, "MaaS.0400",
         "The model 'versioned' already has 10 versions, the most a model can have; delete one to add another.")
    response = admin.post(f"/{PROJECT}/my-models/versioned/versions", json={"path": str(_broken(
        mm["weights"]("v11"), "missing"))})
    assert response.status_code == 400  # the count is checked before the folder
    _bad(admin.post(f"/{PROJECT}/my-models/versioned/versions", json={"path": str(source), "version": 3}),
         400, "MaaS.0400", "Extra inputs are not permitted")  # numbers are not the caller's to choose
    assert admin.delete(f"/{PROJECT}/my-models/versioned", params={"confirm": "DELETE"}).status_code == 204


def test_a_new_version_is_checked_too(mm):
    _create(mm, "checked", mm["weights"]("c"))
    response = mm["admin"].post(f"/{PROJECT}/my-models/checked/versions",
                                json={"path": str(_broken(mm["weights"]("c2"), "architectures"))})
    assert response.status_code == 400 and response.json() == STRUCTURE_ERROR
    adapter = mm["admin"].post(f"/{PROJECT}/my-models/checked/versions",
                               json={"path": str(lora_adapter(mm["root"] / "adapter")), "description": "LoRA"})
    assert adapter.status_code == 201, adapter.text
    assert (adapter.json()["version"], adapter.json()["kind"]) == (2, "lora")


def test_no_delete_while_a_service_uses_a_version(platform, mm):
    admin = mm["admin"]
    model = _create(mm, "served", mm["weights"]("s")).json()
    for _ in range(2):
        assert admin.post(f"/{PROJECT}/my-models/served/versions", json={"path": str(mm["weights"]("s"))}
                          ).status_code == 201
    # A service deployed from version 2 (stopped, so the reconciler leaves it be).
    with session_scope(platform.database_url) as session:
        session.add(Service(id=uuid.uuid4().hex, project_id=PROJECT, name="uses-served", model_id=model["id"],
                            model_version="2", desired="stopped", status="Terminated"))
    _bad(admin.delete(f"/{PROJECT}/my-models/served"), 400, "MaaS.0400",
         "Deleting a model needs the confirmation text DELETE.")
    _bad(admin.delete(f"/{PROJECT}/my-models/served", params={"confirm": "delete"}), 400, "MaaS.0400",
         "confirmation text DELETE")
    _bad(admin.delete(f"/{PROJECT}/my-models/served", params={"confirm": "DELETE"}), 409, "MaaS.0409",
         "The model 'served' cannot be deleted while it is in use by service 'uses-served' (version 2); "
         "delete those first.")
    _bad(admin.delete(f"/{PROJECT}/my-models/served/versions/2", params={"confirm": "DELETE"}), 409, "MaaS.0409",
         "Version 2 of model 'served' cannot be deleted while it is in use by service 'uses-served' (version 2)")
    # Another version is free to go, and its weights with it.
    version3 = admin.get(f"/{PROJECT}/my-models/served/versions/3").json()
    assert admin.delete(f"/{PROJECT}/my-models/served/versions/3", params={"confirm": "DELETE"}).status_code == 204
    assert not Path(version3["path"]).exists()
    assert [v["version"] for v in admin.get(f"/{PROJECT}/my-models/served/versions").json()] == [1, 2]
    with session_scope(platform.database_url) as session:
        session.execute(delete(Service).where(Service.name == "uses-served"))
    assert admin.delete(f"/{PROJECT}/my-models/served/versions/1", params={"confirm": "DELETE"}).status_code == 204
    _bad(admin.delete(f"/{PROJECT}/my-models/served/versions/2", params={"confirm": "DELETE"}), 409, "MaaS.0409",
         "Version 2 is the only version of model 'served'; delete the model instead.")
    assert admin.delete(f"/{PROJECT}/my-models/served", params={"confirm": "DELETE"}).status_code == 204
    _bad(admin.get(f"/{PROJECT}/my-models/served"), 404, "MaaS.0404", "Model 'served' does not exist.")
    assert not (platform.home / "models" / "my" / model["id"]).exists()


def test_projects_do_not_see_each_others_models(mm):
    model = _create(mm, "private", mm["weights"]("p")).json()
    other = mm["other"]
    _bad(other.get(f"/{PROJECT}/my-models"), 403, "MaaS.0403", f"This key has no access to project '{PROJECT}'.")
    for ref in (model["id"], "private"):
        _bad(other.get(f"/{OTHER}/my-models/{ref}"), 404, "MaaS.0404", f"Model '{ref}' does not exist.")
        _bad(other.delete(f"/{OTHER}/my-models/{ref}", params={"confirm": "DELETE"}), 404, "MaaS.0404",
             "does not exist")
        _bad(other.post(f"/{OTHER}/my-models/{ref}/versions", json={"path": str(mm["weights"]("p"))}), 404,
             "MaaS.0404", "does not exist")
    assert other.get(f"/{OTHER}/my-models").json() == []
    # The same name is free in another project.
    mine = other.post(f"/{OTHER}/my-models", json={"name": "private", "base_model": "tiny-chat",
                                                   "path": str(mm["weights"]("p"))})
    assert mine.status_code == 201 and mine.json()["id"] != model["id"]


def test_cli(platform, mm):
    source = mm["weights"]("cli")
    created = platform.maas_json("models", "create", "cli-model", "--base", "tiny-chat", "--path", str(source),
                                 "--description", "from the CLI", "-p", PROJECT)
    assert (created["name"], created["description"], [v["version"] for v in created["versions"]]) == (
        "cli-model", "from the CLI", [1])
    added = platform.maas_json("models", "add-version", "cli-model", "--path", str(source), "-p", PROJECT)
    assert added["version"] == 2 and added["model_id"] == created["id"]
    assert [v["version"] for v in platform.maas_json("models", "versions", "cli-model", "-p", PROJECT)] == [1, 2]
    got = platform.maas_json("models", "get", created["id"], "-p", PROJECT)
    assert got["name"] == "cli-model" and len(got["versions"]) == 2
    assert "cli-model" in [m["name"] for m in platform.maas_json("models", "mine", "-p", PROJECT)]
    assert "tiny-chat" in [m["id"] for m in platform.maas_json("models", "list")]  # the catalog stays the catalog
    refused = platform.maas("models", "create", "cli-bad", "--base", "tiny-chat", "--path",
                            str(_broken(mm["weights"]("cli-bad"), "invalid-json")), "-p", PROJECT, check=False)
    assert refused.returncode == 1 and "Modelarts.6206" in refused.stderr
    table = platform.maas("models", "versions", "cli-model", "-p", PROJECT).stdout
    assert "full" in table and "upload" in table
    assert platform.maas("models", "delete", "cli-model", "-p", PROJECT, check=False).returncode == 1
    assert "Deleted model cli-model." in platform.maas("models", "delete", "cli-model", "--confirm", "DELETE",
                                                       "-p", PROJECT).stdout
    assert platform.maas("models", "get", "cli-model", "-p", PROJECT, check=False).returncode == 1
