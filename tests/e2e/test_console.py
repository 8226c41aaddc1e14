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

import pytest
import sqlalchemy as sa

from tests.helpers import ROOT, wait_status

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
    if not Path(CHROMIUM).exists():
        if os.environ.get("MAAS_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{CHROMIUM} is missing (apt-get install chromium)")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium, as root: .ci/run does)")
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
        assert admin.get(f"/{PROJECT}/usage/summary").json()["totals"]["calls"] == 0


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
    with pytest.raises(Exception):  # a failure, for the failure table
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
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
