"""The web console in a real browser: Debian's Chromium (/usr/bin/chromium) driven by Playwright, against the
session's platform (the console at /api/console, served by the control plane).

One project of its own (two, for the refusal), one service deployed once (deploy, scale to 2, stop), a
screenshot per test under test-artifacts/console/ (gitignored)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import openai
import pytest
import sqlalchemy as sa

from tests.helpers import ROOT, required, wait_status

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts" / "console"
PROJECT, OTHER = "console-a", "console-b"
SERVICE = "console-svc"


def _chromium() -> str:
    """Debian's Chromium; as root with apt-get, installed when missing (as tests/pg.py does for PostgreSQL)."""
    if not Path(CHROMIUM).exists() and os.geteuid() == 0 and shutil.which("apt-get"):
        for attempt in (["apt-get", "install", "-y", "chromium"], ["apt-get", "update"],
                        ["apt-get", "install", "-y", "chromium"]):
            subprocess.run(attempt, capture_output=True, timeout=900,
                           env=os.environ | {"DEBIAN_FRONTEND": "noninteractive"})
            if Path(CHROMIUM).exists():
                break
    if not Path(CHROMIUM).exists():  # a failure where MAAS_REQUIRE_BROWSER=1 (.ci/run)
        required("MAAS_REQUIRE_BROWSER", f"{CHROMIUM} is missing (apt-get install chromium, as root: .ci/run does)")
    return CHROMIUM


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    executable = _chromium()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def console(platform) -> str:
    return platform.base_url + "/api/console"


@pytest.fixture(scope="module")
def project_key(platform) -> str:
    with platform.admin() as admin:
        for project in (PROJECT, OTHER):
            assert admin.post("/projects", json={"id": project}).status_code == 201
        created = admin.post(f"/{PROJECT}/keys", json={"label": "console", "description": "browser tests"})
        assert created.status_code == 201, created.text
    return created.json()["key"]


@pytest.fixture
def shot(request):
    """Call with a page: saves test-artifacts/console/<test>.png."""
    def take(page, suffix: str = "") -> Path:
        path = ARTIFACTS / f"{request.node.name}{suffix}.png"
        page.screenshot(path=str(path), full_page=True)
        return path
    return take


def _login(browser, console: str, key: str):
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    context.set_default_timeout(30_000)
    page = context.new_page()
    page.goto(console + "/")
    assert page.url.endswith("/api/console/login")
    page.fill("input[name=key]", key)
    page.click("button[type=submit]")
    page.wait_for_url("**/models")
    return page


@pytest.fixture
def project_page(browser, console, project_key):
    page = _login(browser, console, project_key)
    yield page
    page.context.close()


@pytest.fixture
def admin_page(browser, console, platform):
    page = _login(browser, console, platform.admin_key)
    yield page
    page.context.close()


def test_login_with_a_project_key(browser, console, project_key, shot):
    page = _login(browser, console, project_key)
    assert page.inner_text("#current-project") == PROJECT
    assert page.locator("article.model[data-model=tiny-chat]").count() == 1
    assert "Context length" in page.inner_text("article.model[data-model=tiny-chat]")
    cookie = next(c for c in page.context.cookies() if c["name"] == "maas_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and project_key not in cookie["value"]
    shot(page)
    page.context.close()
    # A wrong key gets the login form again with the reason, and no session.
    context = browser.new_context()
    page = context.new_page()
    page.goto(console + "/login")
    page.fill("input[name=key]", "sk-not-a-key")
    page.click("button[type=submit]")
    assert "Unknown API key" in page.inner_text("#form-error")
    context.close()


def test_create_a_key_and_see_it_once(project_page, console, shot):
    page = project_page
    page.goto(f"{console}/p/{PROJECT}/keys")
    page.fill("input[name=label]", "made-in-browser")
    page.fill("input[name=description]", "from the console test")
    page.click("form.row button[type=submit]")
    secret = page.inner_text("#new-secret")
    assert secret.startswith("sk-") and len(secret) > 40
    shot(page)
    page.goto(f"{console}/p/{PROJECT}/keys")  # shown once: the list has only the masked form
    assert secret not in page.content()
    row = page.inner_text("tr[data-label=made-in-browser]")
    assert secret[:4] in row and secret[-4:] in row and "********" in row
    # The platform's own message for a refused form.
    page.fill("input[name=label]", "made-in-browser")
    page.fill("input[name=description]", "again")
    page.click("form.row button[type=submit]")
    assert "already exists" in page.inner_text("#form-error")
    # Delete it (the browser's confirm dialog accepted).
    page.on("dialog", lambda dialog: dialog.accept())
    page.click("tr[data-label=made-in-browser] button.danger")
    assert page.locator("tr[data-label=made-in-browser]").count() == 0


def test_streaming_chat_in_the_playground(project_page, console, platform, shot):
    page = project_page
    messages = []
    page.on("console", lambda message: messages.append(f"{message.type}: {message.text}"))
    page.goto(f"{console}/p/{PROJECT}/playground?model=tiny-chat")
    assert page.input_value("#pg-top_k") == "20"
    page.fill("#pg-top_k", "5")
    page.click("#pg-restore")
    assert page.input_value("#pg-top_k") == "20"
    with page.expect_response("**/playground/chat") as answered:
        page.fill("#pg-input", "what is the color of the sea ?")
        page.click("#pg-send")
    assert answered.value.headers["content-type"].startswith("text/event-stream")
    try:
        page.wait_for_selector(".msg.assistant[data-state=done]", timeout=120_000)
    except Exception:
        shot(page, "-failed")
        pytest.fail(f"no answer: error {page.inner_text('#pg-error')!r}, log {page.inner_html('#pg-log')!r}, "
                    f"browser console {messages}")
    answer = page.inner_text(".msg.assistant .content")
    assert answer.strip(), "empty answer"
    # Streamed: the page read several server-sent events (role and first token, the rest, usage), not one body.
    assert int(page.get_attribute(".msg.assistant", "data-events")) >= 3
    shot(page)
    # Recorded (limits and quotas count it) but not in the call statistics.
    engine = sa.create_engine(platform.database_url)
    deadline, rows = time.time() + 30, []
    while time.time() < deadline and not rows:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT playground, stream FROM usage_records WHERE project_id = :p"),
                                {"p": PROJECT}).all()
        time.sleep(0.5)
    engine.dispose()
    assert rows and all(bool(r.playground) and bool(r.stream) for r in rows)
    with platform.admin() as admin:
        totals = admin.get(f"/{PROJECT}/usage/summary").json()["totals"]
        assert totals["calls"] == 0 and totals["playground_calls"] == len(rows)  # shown apart, as such


def test_bad_dataset_upload_shows_its_row_errors(project_page, console, tmp_path, shot):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "hi", "output": "ho"}\n{"instruction": "", "output": "x"}\nnot json\n')
    page = project_page
    page.goto(f"{console}/p/{PROJECT}/finetune")
    page.fill("input[name=name]", "bad-data")
    page.fill("input[name=output_model]", "bad-out")
    page.set_input_files("input[name=dataset]", str(bad))
    page.click("#job-form button[type=submit]")
    rows = page.locator("#bad-rows tbody tr")
    assert rows.count() == 2
    first, second = rows.nth(0).locator("td").all_inner_texts(), rows.nth(1).locator("td").all_inner_texts()
    assert first[:2] == ["2", "instruction"] and second[0] == "3"
    assert "failed" in page.inner_text("#job-created h2")
    shot(page)


def test_usage_chart_with_data(project_page, console, platform, shot):
    with platform.admin() as admin:
        key = admin.post(f"/{PROJECT}/keys", json={"label": "usage", "description": "api calls"}).json()["key"]
    client = platform.client(key)
    for _ in range(3):
        stream = client.chat.completions.create(model="tiny-chat", max_tokens=8, stream=True,
                                                messages=[{"role": "user", "content": "hi"}])
        for _chunk in stream:
            pass
    with pytest.raises(openai.NotFoundError) as refused:  # a failure, for the failure table
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    assert refused.value.body == {"object": "error", "message": "The model `no-such-model` does not exist.",
                                  "type": "NotFoundError", "param": None, "code": 404}
    deadline = time.time() + 30
    with platform.admin() as admin:
        while admin.get(f"/{PROJECT}/usage/summary").json()["totals"]["calls"] < 4 and time.time() < deadline:
            time.sleep(0.5)
    page = project_page
    page.goto(f"{console}/p/{PROJECT}/usage")
    assert int(page.inner_text("#total-calls")) >= 4 and int(page.inner_text("#total-failures")) >= 1
    page.wait_for_function("window.maasCharts && window.maasCharts.length === 3")
    plotted = page.evaluate("window.maasCharts[0].data.datasets[0].data.reduce((a, b) => a + b, 0)")
    assert plotted >= 4
    assert page.evaluate("window.maasCharts[0].data.labels.length") > 1  # minutes of today
    assert "tiny-chat" in page.inner_text("#usage-services")
    assert page.locator("#usage-failures tbody tr").count() >= 1
    shot(page)


def test_admin_creates_a_project(admin_page, console, platform, shot):
    page = admin_page
    page.goto(f"{console}/admin/projects")
    page.fill("#project-form input[name=id]", "made-in-console")
    page.fill("#project-form input[name=name]", "Made in the console")
    page.click("#project-form button[type=submit]")
    assert "created" in page.inner_text(".notice")
    assert page.locator("tr[data-id=made-in-console]").count() == 1
    shot(page)
    with platform.admin() as admin:
        assert "made-in-console" in [p["id"] for p in admin.get("/projects").json()]
    page.fill("#project-form input[name=id]", "Bad Id!")
    page.click("#project-form button[type=submit]")
    assert "id" in page.inner_text("#form-error")


def test_a_project_key_is_refused_on_another_projects_page(project_page, console, shot):
    page = project_page
    response = page.goto(f"{console}/p/{OTHER}/keys")
    assert response.status == 403
    assert page.inner_text("#error-message") == f"This key has no access to project '{OTHER}'."
    shot(page)
    assert page.goto(f"{console}/admin/projects").status == 403
    assert page.goto(f"{console}/p/{PROJECT}/no-such-page").status == 404
    assert "Traceback" not in page.content()


def test_deploy_scale_and_stop_a_service(project_page, console, platform, shot):
    page = project_page
    page.goto(f"{console}/p/{PROJECT}/services?model=tiny-chat")
    page.fill("#deploy-form input[name=name]", SERVICE)
    page.click("#deploy-form button[type=submit]")
    page.wait_for_url(f"**/services/*")
    assert "is deploying" in page.inner_text(".notice")
    wait_status(platform, SERVICE, {"Running"}, project=PROJECT)
    page.wait_for_selector("#svc-state:text('Running')", timeout=30_000)  # htmx polls the status block
    assert f'"model": "{SERVICE}"' in page.inner_text("#snippet-curl")
    assert "/v1" in page.inner_text("#snippet-python")
    shot(page, "-running")
    page.fill("#scale-form input[name=instances]", "2")
    page.click("#scale-form button[type=submit]")
    assert "Scale requested" in page.inner_text(".notice")
    wait_status(platform, SERVICE, {"Running"}, project=PROJECT)
    page.wait_for_selector("#svc-instances:text('2')")
    # Scale-in without YES: the platform's message.
    page.fill("#scale-form input[name=instances]", "1")
    page.click("#scale-form button[type=submit]")
    assert "YES" in page.inner_text("#form-error")
    page.on("dialog", lambda dialog: dialog.accept())
    page.click("#svc-stop")
    assert "Stop requested" in page.inner_text(".notice")
    wait_status(platform, SERVICE, {"Terminated"}, project=PROJECT)
    page.wait_for_selector("#svc-state:text('Terminated')", timeout=30_000)
    assert "Stop requested" in page.inner_text("#svc-events")
    page.goto(f"{console}/p/{PROJECT}/services")
    assert "Terminated" in page.inner_text(f"tr[data-name={SERVICE}]")
    shot(page)
    with platform.admin() as admin:
        admin.delete(f"/{PROJECT}/services/{SERVICE}", params={"confirm": "DELETE"})


def test_a_compression_job_from_the_console(project_page, console, platform, shot):
    """Create (the form), progress refreshed by htmx until completed, its logs, stop refused once completed,
    delete only after typing DELETE; the compressed version is in the API's my-model listing."""
    page = project_page
    page.goto(f"{console}/p/{PROJECT}/compression")
    form = "#compress-form"
    page.fill(f"{form} input[name=name]", "console-cp")
    page.select_option(f"{form} select[name=model]", "tiny-chat")
    page.select_option(f"{form} select[name=strategy]", "gptq-w4a16")
    page.fill(f"{form} input[name=output_model]", "console-gptq")
    page.fill(f"{form} input[name=num_samples]", "16")
    page.fill(f"{form} input[name=max_seq_len]", "128")
    page.click(f"{form} button[type=submit]")
    page.wait_for_url("**/compression/cp-*")
    assert "Compression job console-cp created: pending." in page.inner_text(".notice")
    job_id = page.url.rsplit("/", 1)[-1].split("?")[0]
    page.wait_for_selector("#cp-status:text-matches('completed|failed|stopped')", timeout=420_000)
    with platform.admin() as admin:
        job = admin.get(f"/{PROJECT}/compression/{job_id}").json()
    assert job["status"] == "completed", job["status_reason"]
    assert page.inner_text("#cp-status") == "completed" and float(page.inner_text("#cp-percent")) == 100
    assert page.inner_text("#cp-result").startswith("console-gptq v1 (gptq-w4a16)")  # the number, not the id
    page.fill("input[name=search]", "calibrating")
    page.click("form.row button:text('Search')")
    assert "calibrating layer group 1/" in page.inner_text("#job-logs")
    shot(page)
    page.click("#cp-stop")
    assert "Cannot stop the job 'console-cp' while it is completed" in page.inner_text("#form-error")
    page.goto(f"{console}/p/{PROJECT}/compression")
    assert "completed" in page.inner_text("tr[data-name=console-cp]")
    page.goto(f"{console}/p/{PROJECT}/my-models")
    assert "gptq-w4a16" in page.inner_text("tr[data-name=console-gptq]")
    page.goto(f"{console}/p/{PROJECT}/compression/{job_id}")
    page.fill("#cp-delete-form input[name=confirm]", "yes")
    page.click("#cp-delete-form button")
    assert "needs the confirmation text DELETE" in page.inner_text("#form-error")
    page.fill("#cp-delete-form input[name=confirm]", "DELETE")
    page.click("#cp-delete-form button")
    page.wait_for_url(lambda url: f"/p/{PROJECT}/compression?notice=" in url)
    assert page.locator("tr[data-name=console-cp]").count() == 0
    with platform.admin() as admin:
        assert admin.get(f"/{PROJECT}/compression/{job_id}").status_code == 404
        versions = admin.get(f"/{PROJECT}/my-models/console-gptq").json()["versions"]
        assert [v["quantization"] for v in versions] == ["gptq-w4a16"]  # the version stays: it is a copy


def test_my_models_import_and_delete(project_page, console, platform, tmp_path, shot):
    """Import a folder under an import root (the session's temp folders are one), then delete the model after
    typing DELETE: it is gone from the API's listing."""
    folder = tmp_path / "console-weights"
    shutil.copytree(platform.home / "models" / "tiny-chat", folder)
    page = project_page
    page.goto(f"{console}/p/{PROJECT}/my-models")
    page.fill("#import-form input[name=name]", "console-import")
    page.select_option("#import-form select[name=base_model]", "tiny-chat")
    page.fill("#import-form input[name=path]", "/etc")
    page.click("#import-form button[type=submit]")
    assert "must lie under an import root" in page.inner_text("#form-error")
    page.fill("#import-form input[name=path]", str(folder))
    page.click("#import-form button[type=submit]")
    assert "Model console-import imported: version 1." in page.inner_text(".notice")
    row = "tr[data-name=console-import]"
    assert "v1" in page.inner_text(row) and "full" in page.inner_text(row)
    with platform.admin() as admin:
        listed = admin.get(f"/{PROJECT}/my-models").json()
        assert "console-import" in [m["name"] for m in listed]
    shot(page)
    page.fill(f"{row} form.delete-model input[name=confirm]", "delete")
    page.click(f"{row} form.delete-model button")
    assert "needs the confirmation text DELETE" in page.inner_text("#form-error")
    page.fill(f"{row} form.delete-model input[name=confirm]", "DELETE")
    page.click(f"{row} form.delete-model button")
    assert "Model deleted." in page.inner_text(".notice")
    assert page.locator(row).count() == 0
    with platform.admin() as admin:
        assert "console-import" not in [m["name"] for m in admin.get(f"/{PROJECT}/my-models").json()]
        assert admin.get(f"/{PROJECT}/my-models/console-import").status_code == 404


def test_admin_freezes_a_project_and_edits_the_offer(admin_page, console, platform, project_key, shot):
    """Freeze: the project's key gets ModelArts.81006 from the API; unfreeze gives the use back. The offer's
    RPM set on the page is what the REST API lists (a bad value's message: tests/db/test_console.py)."""
    def chat() -> httpx.Response:
        return httpx.post(platform.base_url + "/v1/chat/completions", timeout=120,
                          headers={"Authorization": f"Bearer {project_key}"},
                          json={"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}],
                                "max_tokens": 4})

    page = admin_page
    with platform.admin() as admin:
        before = {p["model_id"]: p for p in admin.get("/presets").json()}["tiny-chat"]
    try:
        page.goto(f"{console}/admin/presets")
        page.select_option("#freeze-form select[name=project_id]", PROJECT)
        page.select_option("#freeze-form select[name=model_id]", "*")
        page.click("#freeze")
        assert f"Project {PROJECT}: every preset frozen." in page.inner_text(".notice")
        assert "frozen" in page.inner_text(f"#project-standing tr[data-id={PROJECT}] td[data-model=tiny-chat]")
        frozen = chat()
        assert (frozen.status_code, frozen.json()) == (401, {"error_code": "ModelArts.81006",
                                                             "error_msg": "The resource is frozen."})
        shot(page, "-frozen")
        page.select_option("#freeze-form select[name=project_id]", PROJECT)
        page.select_option("#freeze-form select[name=model_id]", "*")
        page.click("#unfreeze")
        assert f"Project {PROJECT}: every preset unfrozen." in page.inner_text(".notice")
        assert chat().status_code == 200
        offer = "#preset-offers tr[data-model=tiny-chat]"
        page.fill(f"{offer} input[name=rpm]", "4321")
        page.click(f"{offer} button")
        assert "The offer of tiny-chat is saved." in page.inner_text(".notice")
        with platform.admin() as admin:
            assert {p["model_id"]: p for p in admin.get("/presets").json()}["tiny-chat"]["rpm"] == 4321
        shot(page)
    finally:
        with platform.admin() as admin:
            for preset in admin.get("/presets").json():
                admin.post(f"/presets/{preset['model_id']}/freeze", json={"project_id": PROJECT, "frozen": False})
            admin.put("/presets/tiny-chat", json={k: before[k] for k in ("kind", "expires_at", "free_quota_tokens",
                                                                          "rpm", "tpm")})
