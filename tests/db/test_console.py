"""The web console's pages and rules through cluster.app on SQLite, without Ray (the accounting actor's reload
and the reconciler's wake-up are replaced by no-ops): login, cookie, CSRF, a project key's reach, a key shown
once, the platform's messages, bad dataset rows, playground calls left out of the statistics. The same in a
real browser on the real platform: tests/e2e/test_console.py."""

from __future__ import annotations

import json
import re
import time
import uuid

import pytest
from starlette.testclient import TestClient

from cluster.settings import get_settings
from tests.db.world import offline_control_plane
from cluster.state.db import CompressionJob, ModelVersion, MyModel, PresetGrant, UsageRecord, session_scope

ADMIN = "admin-console-db"
CONSOLE = "/api/console"
LLAMA = {"model_type": "llama", "architectures": ["LlamaForCausalLM"]}


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    with offline_control_plane(tmp_path_factory.mktemp("console"), ADMIN, LLAMA,
                               MAAS_IMPORT_ROOTS=str(tmp_path_factory.getbasetemp())) as control_plane:
        yield control_plane


def _login(app, key: str) -> tuple[TestClient, str]:
    client = TestClient(app, raise_server_exceptions=False)
    form = client.get(f"{CONSOLE}/login")
    token = re.search(r'name="csrf" value="([^"]+)"', form.text)[1]
    page = client.post(f"{CONSOLE}/login", data={"csrf": token, "key": key})
    assert page.status_code == 200 and page.url.path.endswith("/models"), page.text[-500:]
    return client, re.search(r'data-csrf="([^"]+)"', page.text)[1]


@pytest.fixture(scope="module")
def admin(app):
    return _login(app, ADMIN)


@pytest.fixture(scope="module")
def team(app, admin):
    """Project team-c, and the console session of one of its keys."""
    client, csrf = admin
    assert client.post(f"{CONSOLE}/admin/projects", data={"csrf": csrf, "id": "team-c"}).status_code == 200
    created = client.post(f"{CONSOLE}/p/team-c/keys", data={"csrf": csrf, "label": "c1", "description": "d"})
    secret = re.search(r'id="new-secret">(sk-[^<]+)<', created.text)[1]
    return (*_login(app, secret), secret)


def test_login_refuses_an_unknown_key_and_a_forged_form(app):
    client = TestClient(app, raise_server_exceptions=False)
    assert client.get(f"{CONSOLE}/p/default/models").url.path == f"{CONSOLE}/login"  # not logged in
    token = re.search(r'name="csrf" value="([^"]+)"', client.get(f"{CONSOLE}/login").text)[1]
    refused = client.post(f"{CONSOLE}/login", data={"csrf": token, "key": "sk-nope"})
    assert refused.status_code == 401 and "Unknown API key" in refused.text
    forged = TestClient(app, raise_server_exceptions=False).post(f"{CONSOLE}/login",
                                                                 data={"csrf": token, "key": ADMIN})
    assert forged.status_code == 401 and "expired" in forged.text  # no login cookie: not this browser's form


def test_the_session_cookie_is_signed_httponly_strict_and_holds_no_key(app, team):
    _client, _csrf, secret = team
    page = _login_response(app, secret)
    cookie = next(c for c in page.headers.get_list("set-cookie") if c.startswith("maas_console="))
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and f"Path={CONSOLE}/" in cookie
    assert secret not in cookie
    value = re.search(r"maas_console=([^;]+)", cookie)[1]
    tampered = TestClient(app, raise_server_exceptions=False, cookies={"maas_console": value[:-2] + "xx"})
    assert tampered.get(f"{CONSOLE}/p/team-c/models").url.path == f"{CONSOLE}/login"


def _login_response(app, key: str):
    client = TestClient(app, raise_server_exceptions=False, follow_redirects=False)
    token = re.search(r'name="csrf" value="([^"]+)"', client.get(f"{CONSOLE}/login").text)[1]
    return client.post(f"{CONSOLE}/login", data={"csrf": token, "key": key})


def test_a_form_without_the_csrf_token_is_refused(team):
    client, _csrf, _secret = team
    refused = client.post(f"{CONSOLE}/p/team-c/keys", data={"label": "x", "description": "d"})
    assert refused.status_code == 403 and "did not come from this console" in refused.text
    assert "x" not in [k for k in re.findall(r'data-label="([^"]+)"', client.get(f"{CONSOLE}/p/team-c/keys").text)]


def test_a_key_is_shown_once_then_masked(team):
    client, csrf, _secret = team
    created = client.post(f"{CONSOLE}/p/team-c/keys", data={"csrf": csrf, "label": "once", "description": "d"})
    secret = re.search(r'id="new-secret">(sk-[^<]+)<', created.text)[1]
    listed = client.get(f"{CONSOLE}/p/team-c/keys").text
    assert secret not in listed and f"{secret[:4]}********{secret[-4:]}" in listed
    again = client.post(f"{CONSOLE}/p/team-c/keys", data={"csrf": csrf, "label": "once", "description": "d"})
    assert again.status_code == 409 and "An API key labelled &#39;once&#39; already exists." in again.text
    bad = client.post(f"{CONSOLE}/p/team-c/keys", data={"csrf": csrf, "label": "no spaces", "description": "d"})
    assert bad.status_code == 400 and "label must be 1-100 characters" in bad.text


def test_a_project_key_sees_only_its_project(team):
    client, _csrf, _secret = team
    other = client.get(f"{CONSOLE}/p/default/services")
    assert other.status_code == 403 and "This key has no access to project &#39;default&#39;." in other.text
    assert client.get(f"{CONSOLE}/admin/projects").status_code == 403
    assert client.get(f"{CONSOLE}/p/team-c/services").status_code == 200
    missing = client.get(f"{CONSOLE}/p/team-c/nothing-here")
    assert missing.status_code == 404 and "Traceback" not in missing.text


def test_the_admin_sees_every_project_and_creates_one(admin):
    client, csrf = admin
    assert client.get(f"{CONSOLE}/p/default/keys").status_code == 200
    made = client.post(f"{CONSOLE}/admin/projects", data={"csrf": csrf, "id": "made-here", "name": "Made"})
    assert made.status_code == 200 and "Project made-here created." in made.text
    twice = client.post(f"{CONSOLE}/admin/projects", data={"csrf": csrf, "id": "made-here"})
    assert twice.status_code == 409 and "already exists" in twice.text
    assert client.get(f"{CONSOLE}/p/no-such-project/keys").status_code == 404
    quota = client.post(f"{CONSOLE}/admin/projects/made-here/quotas", data={"csrf": csrf, "services": "3"})
    assert quota.status_code == 200 and 'placeholder="3"' in quota.text
    unconfirmed = client.post(f"{CONSOLE}/admin/projects/made-here/delete", data={"csrf": csrf, "confirm": "yes"})
    assert unconfirmed.status_code == 400 and "DELETE" in unconfirmed.text
    gone = client.post(f"{CONSOLE}/admin/projects/made-here/delete", data={"csrf": csrf, "confirm": "DELETE"})
    assert gone.status_code == 200 and 'data-id="made-here"' not in gone.text


def test_deploy_form_shows_the_platforms_message(team):
    client, csrf, _secret = team
    bad = client.post(f"{CONSOLE}/p/team-c/services", data={"csrf": csrf, "name": "1bad", "model": "tiny-chat"})
    assert bad.status_code == 400 and "name must be 1-64 characters" in bad.text
    made = client.post(f"{CONSOLE}/p/team-c/services", data={"csrf": csrf, "name": "svc-c", "model": "tiny-chat"})
    assert made.status_code == 200 and "Service svc-c is deploying." in made.text
    assert '"model": "svc-c"' in made.text  # the how-to-call snippets
    early = client.post(made.url.path + "/scale", data={"csrf": csrf, "instances": "2"})
    assert early.status_code == 409 and "scale is allowed only when Running, Concerning" in early.text
    upgrade = client.post(made.url.path + "/upgrade", data={"csrf": csrf, "model_version": "2"})
    assert upgrade.status_code == 409 and "upgrade is allowed only when" in upgrade.text


def test_a_bad_dataset_shows_its_rows(team, tmp_path):
    client, csrf, _secret = team
    data = b'{"instruction": "hi", "output": "ho"}\n{"instruction": "", "output": "x"}\nnot json\n'
    page = client.post(f"{CONSOLE}/p/team-c/finetune/datasets",
                       data={"csrf": csrf, "name": "bad-data", "model": "tiny-chat", "type": "lora",
                             "format": "alpaca", "output_model": "bad-out"},
                       files={"dataset": ("bad.jsonl", data, "application/jsonl")})
    assert page.status_code == 400
    rows = re.findall(r"<tr><td>(\d+)</td><td>([^<]+)</td><td>([^<]+)</td></tr>", page.text)
    assert [(line, field) for line, field, _ in rows] == [("2", "instruction"), ("3", "line")]
    job = re.search(r'/finetune/(ft-[0-9a-f]+)"', page.text)[1]
    detail = client.get(f"{CONSOLE}/p/team-c/finetune/{job}")  # its own page: status, the same rows, no logs yet
    assert detail.status_code == 200 and 'id="job-status">failed<' in detail.text
    assert len(re.findall(r"<tr><td>(\d+)</td><td>([^<]+)</td><td>([^<]+)</td></tr>", detail.text)) == 2
    refused = client.post(f"{CONSOLE}/p/team-c/finetune/{job}/continue", data={"csrf": csrf})
    assert refused.status_code == 409 and "continue is allowed from" in refused.text


def test_usage_page_charts_api_calls_and_leaves_out_the_playground(team):
    client, _csrf, _secret = team
    now = time.time()
    with session_scope(get_settings().database_url) as session:
        for i in range(6):
            session.add(UsageRecord(request_id=uuid.uuid4().hex, ts=now - 60 * i, project_id="team-c",
                                    service_type="free", service_id="tiny-chat", model="tiny-chat",
                                    prompt_tokens=3, completion_tokens=4, status_code=200 if i else 429,
                                    error_code="" if i else "ModelArts.81101", latency_ms=10.0,
                                    playground=i >= 4))
    page = client.get(f"{CONSOLE}/p/team-c/usage")
    assert page.status_code == 200
    assert re.search(r'id="total-calls">(\d+)<', page.text)[1] == "4"  # the two playground calls are left out
    assert re.search(r'id="total-failures">(\d+)<', page.text)[1] == "1"
    chart = re.search(r'<script type="application/json" id="usage-data">(.*?)</script>', page.text, re.S)[1]
    assert '"calls": [' in chart and "ModelArts.81101" in page.text
    export = client.get(f"{CONSOLE}/p/team-c/usage/export?range=today")
    assert export.status_code == 200 and export.content[:2] == b"PK"  # an xlsx (zip) file
    assert 'attachment; filename="usage-team-c-' in export.headers["content-disposition"]


def _weights(folder):
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(LLAMA))
    (folder / "model.safetensors").write_bytes(b"0")
    (folder / "tokenizer.json").write_text("{}")
    return folder


def test_my_models_import_add_a_version_and_delete_with_confirmation(team, tmp_path):
    client, csrf, _secret = team
    outside = client.post(f"{CONSOLE}/p/team-c/my-models", data={"csrf": csrf, "name": "m1", "base_model": "tiny-chat",
                                                                   "path": "/etc"})
    assert outside.status_code == 403 and "must lie under an import root" in outside.text
    made = client.post(f"{CONSOLE}/p/team-c/my-models", data={"csrf": csrf, "name": "m1", "base_model": "tiny-chat",
                                                                "path": str(_weights(tmp_path / "w1"))})
    assert made.status_code == 200 and "Model m1 imported: version 1." in made.text
    model_id = re.search(r'<div class="muted">(mdl-[0-9a-f]+)', made.text)[1]
    added = client.post(f"{CONSOLE}/p/team-c/my-models/{model_id}/versions",
                        data={"csrf": csrf, "path": str(_weights(tmp_path / "w2"))})
    assert added.status_code == 200 and "Version 2 added." in added.text and 'data-version="2"' in added.text
    unconfirmed = client.post(f"{CONSOLE}/p/team-c/my-models/{model_id}/delete-version",
                              data={"csrf": csrf, "version": "2", "confirm": "delete"})
    assert unconfirmed.status_code == 400 and "needs the confirmation text DELETE" in unconfirmed.text
    version = client.post(f"{CONSOLE}/p/team-c/my-models/{model_id}/delete-version",
                          data={"csrf": csrf, "version": "2", "confirm": "DELETE"})
    assert version.status_code == 200 and 'data-version="2"' not in version.text
    gone = client.post(f"{CONSOLE}/p/team-c/my-models/{model_id}/delete", data={"csrf": csrf, "confirm": "DELETE"})
    assert gone.status_code == 200 and "Model deleted." in gone.text and 'data-name="m1"' not in gone.text
    assert "/w1" not in client.get(f"{CONSOLE}/p/team-c/my-models").text  # a project key sees no import roots


def test_compression_form_shows_the_platforms_message(team):
    client, csrf, _secret = team
    page = client.get(f"{CONSOLE}/p/team-c/compression")
    assert page.status_code == 200 and '<option value="tiny-chat"' in page.text and "gptq-w4a16" in page.text
    form = {"csrf": csrf, "name": "c1", "model": "tiny-chat", "strategy": "awq-w4a16", "output_model": "c1-out"}
    bad = client.post(f"{CONSOLE}/p/team-c/compression", data=form | {"migration_strength": "0.5"})
    assert bad.status_code == 400 and "migration_strength applies to smoothquant-w8a8 only" in bad.text
    missing = client.post(f"{CONSOLE}/p/team-c/compression", data=form | {"model": "nope"})
    assert missing.status_code == 404 and "nope" in missing.text
    assert client.get(f"{CONSOLE}/p/team-c/compression/cp-000000000000").status_code == 404
    assert client.get(f"{CONSOLE}/p/default/compression").status_code == 403


def test_admin_edits_the_preset_offer_and_freezes_a_project(admin, team):
    client, csrf = admin
    saved = client.post(f"{CONSOLE}/admin/presets/tiny-chat", data={
        "csrf": csrf, "kind": "free", "expires_at": "2031-01-02T03:04", "free_quota_tokens": "5000", "rpm": "77",
        "tpm": ""})
    assert saved.status_code == 200 and "The offer of tiny-chat is saved." in saved.text
    assert 'value="2031-01-02T03:04"' in saved.text and 'value="77"' in saved.text
    bad = client.post(f"{CONSOLE}/admin/presets/tiny-chat", data={"csrf": csrf, "kind": "free", "rpm": "0"})
    assert bad.status_code == 400 and "rpm" in bad.text
    frozen = client.post(f"{CONSOLE}/admin/presets/freeze", data={"csrf": csrf, "project_id": "team-c",
                                                                   "model_id": "*", "frozen": "1"})
    assert frozen.status_code == 200 and "Project team-c: every preset frozen." in frozen.text
    with session_scope(get_settings().database_url) as session:
        assert {g.model_id for g in session.query(PresetGrant).filter_by(project_id="team-c", frozen=True)} == {
            "tiny-chat", "all-minilm-l6-v2"}
    project_client, _csrf, _secret = team
    assert "frozen" in project_client.get(f"{CONSOLE}/p/team-c/offers").text
    assert project_client.get(f"{CONSOLE}/admin/presets").status_code == 403
    thawed = client.post(f"{CONSOLE}/admin/presets/freeze", data={"csrf": csrf, "project_id": "team-c",
                                                                   "model_id": "tiny-chat", "frozen": "0"})
    assert thawed.status_code == 200 and "tiny-chat unfrozen" in thawed.text
    client.post(f"{CONSOLE}/admin/presets/tiny-chat", data={"csrf": csrf, "kind": "free"})  # back to the default


def test_a_compression_jobs_page_progress_logs_stop_and_delete(team, tmp_path, monkeypatch):
    """A completed job's page (recorded here as the job-sync thread records one; Ray's logs replaced)."""
    import cluster.runtime.jobs as jobs

    client, csrf, _secret = team
    monkeypatch.setattr(jobs, "searched_logs", lambda row, search="": f"calibrating layer 1\nsearch={search}\n")
    out = tmp_path / "cp-out"
    out.mkdir()
    (out / "status.json").write_text(json.dumps({"phase": "completed", "percent": 100.0, "step": 2, "total_steps": 2,
                                                 "elapsed_s": 7.5, "eta_s": 0, "outputs": {"bytes": 3 * 1048576}}))
    with session_scope(get_settings().database_url) as session:
        session.add(MyModel(id="mdl-cout", project_id="team-c", name="c-out", description="", base_model="tiny-chat"))
        session.flush()
        session.add(ModelVersion(id="mv-cout-1", model_id="mdl-cout", version=1, path=str(tmp_path), kind="full",
                                 source="compress:cp-0123456789ab", status="created", quantization="awq-w4a16"))
        session.add(CompressionJob(
            id="cp-0123456789ab", project_id="team-c", name="done-job", strategy="awq-w4a16", model_ref="tiny-chat",
            base_model="tiny-chat", source_path="/x", output_model="c-out", output_dir=str(out), status="completed",
            runs=1, result_version="mv-cout-1", params={"num_samples": 16, "max_seq_len": 128}))
    listed = client.get(f"{CONSOLE}/p/team-c/compression").text
    assert 'data-name="done-job"' in listed and "c-out v1</td>" in listed  # the version's number, not its id
    assert "hx-trigger" not in listed.split('id="compression-rows"')[1].split(">")[0]  # finished: no polling
    page = client.get(f"{CONSOLE}/p/team-c/compression/done-job?search=layer").text
    assert 'id="cp-status">completed<' in page and 'id="cp-percent">100.0<' in page and "layer groups 2/2" in page
    assert "c-out v1 (awq-w4a16), 3.0 MiB" in page and "search=layer" in page and "ETA" not in page
    job = f"{CONSOLE}/p/team-c/compression/cp-0123456789ab"
    progress = client.get(f"{job}/progress")
    assert progress.status_code == 200 and 'id="cp-progress"' in progress.text and "<html" not in progress.text
    download = client.get(f"{job}/logs")
    assert 'attachment; filename="done-job.log"' in download.headers["content-disposition"]
    stop = client.post(f"{job}/stop", data={"csrf": csrf})
    assert stop.status_code == 409 and "Cannot stop the job &#39;done-job&#39; while it is completed" in stop.text
    unconfirmed = client.post(f"{job}/delete", data={"csrf": csrf})
    assert unconfirmed.status_code == 400 and "needs the confirmation text DELETE" in unconfirmed.text
    gone = client.post(f"{job}/delete", data={"csrf": csrf, "confirm": "DELETE"})
    assert gone.status_code == 200 and "Compression job done-job deleted." in gone.text
    assert 'data-name="done-job"' not in gone.text and not out.exists()
