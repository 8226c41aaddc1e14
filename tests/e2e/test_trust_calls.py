"""Trust, round 2 (issue 26), the call path: what a fresh project's key (or no key) gets when it tries to skip
limits, hide its calls or make the gateway work for free. Black-box: HTTP and the official clients with the
tenant's own key; the admin key only sets what an admin sets (offers); the records are read from the database."""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest
from sqlalchemy import create_engine, text

from tests.bodies import read_answer

pytestmark = pytest.mark.e2e
CHAT = "tiny-chat"
OVER_CONTEXT = "maximum context length"


def _tenant(platform) -> tuple[str, str]:
    return platform.new_project("t26")


def _post(platform, key: str, path: str, body: dict, **headers) -> httpx.Response:
    return httpx.post(platform.base_url + path, json=body, timeout=120,
                      headers={"Authorization": f"Bearer {key}", **headers})


def _records(platform, project: str, count: int, timeout: float = 30) -> list[dict]:
    engine = create_engine(platform.database_url)
    deadline, rows = time.time() + timeout, []
    try:
        while time.time() < deadline:
            with engine.connect() as conn:
                rows = [dict(r._mapping) for r in conn.execute(
                    text("SELECT * FROM usage_records WHERE project_id = :p ORDER BY ts"), {"p": project})]
            if sum(r["calls"] for r in rows) >= count:
                break
            time.sleep(0.3)
    finally:
        engine.dispose()
    return rows


@pytest.fixture
def offer(platform):
    """tiny-chat's global offer, set by the test and put back after it."""
    admin = platform.admin()

    def set_offer(**fields) -> None:
        assert admin.put(f"/presets/{CHAT}", json={"kind": "free", **fields}).is_success

    yield set_offer
    set_offer()
    admin.close()


def test_no_budget_skips_the_limits(platform, offer):
    """Item 1: before, 6 of 10 such calls answered 200 with RPM at 3. Each is now refused with the context-length
    400 (a choice that can never fit) or admitted, reserved and counted: at most 3 answers a minute."""
    project, key = _tenant(platform)
    offer(rpm=3)
    calls = [("/v1/chat/completions", {"model": CHAT, "n": 16, "max_tokens": 128,
                                        "messages": [{"role": "user", "content": "hi"}]}),
             ("/v1/messages", {"model": CHAT, "max_tokens": 100_000, "messages": [{"role": "user", "content": "hi"}]}),
             ("/v1/responses", {"model": CHAT, "max_output_tokens": 100_000, "input": "hi"})] * 4
    answers = [(path, _post(platform, key, path, body)) for path, body in calls]
    statuses = [answer.status_code for _, answer in answers]
    assert statuses.count(200) <= 3, statuses
    for path, answer in answers:
        if path == "/v1/chat/completions":
            assert answer.status_code in (200, 429), answer.text
            if answer.status_code == 429:
                assert answer.json()["error_code"] == "ModelArts.81101"
            else:
                assert len(answer.json()["choices"]) == 16
        else:  # a choice of 100,000 tokens never fits tiny-chat's 2,048: the product's 400, whatever the limit
            assert answer.status_code == 400 and OVER_CONTEXT in answer.json()["message"], answer.text
    ok = [r for r in _records(platform, project, len(calls)) if r["status_code"] == 200]
    assert len(ok) == statuses.count(200) and all(r["completion_tokens"] > 0 for r in ok)


def test_a_callers_playground_header_hides_nothing(platform):
    """Item 3: before, 3 calls with the header moved the project's summary by 0."""
    project, key = _tenant(platform)
    for value in ("1", "true", "0" * 64):
        answer = _post(platform, key, "/v1/chat/completions", {"model": CHAT, "max_tokens": 2, "messages": [
            {"role": "user", "content": "hi"}]}, **{"X-MaaS-Playground": value})
        assert answer.status_code == 200
    rows = _records(platform, project, 3)
    assert len(rows) == 3 and not any(r["playground"] for r in rows)
    with platform.admin() as admin:
        assert admin.get(f"/{project}/usage/summary").json()["totals"]["calls"] == 3


def test_token_id_prompts_are_counted_and_unreadable_input_is_refused_under_moderation(platform, offer):
    """Item 4: a prompt of token ids reserved 1 token of TPM and skipped input moderation."""
    project, key = _tenant(platform)
    offer(tpm=100)
    ids = list(range(5, 205))  # 200 tokens: over the TPM on their own
    answer = _post(platform, key, "/v1/completions", {"model": CHAT, "max_tokens": 1, "prompt": ids})
    assert answer.status_code == 429 and answer.json()["error_code"] == "ModelArts.81103", answer.text
    offer()
    small = _post(platform, key, "/v1/completions", {"model": CHAT, "max_tokens": 1, "prompt": ids[:20]})
    assert small.status_code == 200 and small.json()["usage"]["prompt_tokens"] == 20
    terms = platform.home / "moderation_terms.txt"
    terms.write_text("some-flagged-term\n")
    try:
        time.sleep(1.3)  # the gateway re-reads the file within a second of a change
        refused = _post(platform, key, "/v1/completions", {"model": CHAT, "max_tokens": 1, "prompt": ids[:20]})
        assert refused.status_code == 400 and "token-id input" in refused.json()["message"], refused.text
        as_text = _post(platform, key, "/v1/completions", {"model": CHAT, "max_tokens": 1, "prompt": "hello"})
        assert as_text.status_code == 200
    finally:
        terms.write_text("")
        time.sleep(1.3)


def test_a_moderated_stream_is_billed_with_what_the_engine_processed(platform):
    """Item 2: a stream cut by moderation was billed with no prompt tokens."""
    project, key = _tenant(platform)
    body = {"model": CHAT, "max_tokens": 24, "temperature": 0, "messages": [
        {"role": "user", "content": "what color is the grass ? " * 8}]}
    plain = _post(platform, key, "/v1/chat/completions", body).json()
    words = [w for w in plain["choices"][0]["message"]["content"].split() if w.isalpha() and w not in
             body["messages"][0]["content"].split()]
    assert words, plain
    terms = platform.home / "moderation_terms.txt"
    terms.write_text(words[-1] + "\n")
    try:
        time.sleep(1.3)
        with httpx.stream("POST", platform.base_url + "/v1/chat/completions", json=body | {"stream": True},
                          headers={"Authorization": f"Bearer {key}"}, timeout=120) as stream:
            lines = [line for line in stream.iter_lines() if line.startswith("data: ")]
        assert json.loads(lines[-2][6:])["choices"][0]["finish_reason"] == "content_filter"
    finally:
        terms.write_text("")
    rows = _records(platform, project, 2)
    assert len(rows) == 2
    assert rows[1]["prompt_tokens"] == plain["usage"]["prompt_tokens"], rows[1]
    assert rows[1]["completion_tokens"] >= 1 and rows[1]["status_code"] == 200


def test_a_loop_of_refusals_adds_bounded_rows_and_stays_exact(platform):
    """Item 5: each refusal was a row of its own; a loop of them grew usage_records without bound."""
    project, key = _tenant(platform)
    with httpx.Client(base_url=platform.base_url, timeout=60, headers={"Authorization": f"Bearer {key}"}) as http:
        for i in range(60):
            answer = http.post("/v1/chat/completions", json={"model": f"no-such-model-{i}", "messages": [
                {"role": "user", "content": "hi"}]})
            assert answer.status_code == 404
    rows = _records(platform, project, 60)
    assert sum(r["calls"] for r in rows) == 60 and len(rows) <= 2 * 11  # at most two minutes' first rows + folds
    with platform.admin() as admin:
        totals = admin.get(f"/{project}/usage/summary").json()["totals"]
    assert (totals["calls"], totals["failures"]) == (60, 60)


def test_a_large_body_is_not_read_for_an_unknown_key(platform):
    """Item 10 (gateway): the 401 comes back after the headers, before the body is sent."""
    host, port = platform.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as conn:
        conn.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Authorization: Bearer sk-not-a-key\r\nContent-Length: 8000000\r\n\r\n" + b"{" * 1000)
        answer = read_answer(conn)
    head, body = answer.decode(errors="replace").split("\r\n\r\n", 1)
    assert head.startswith("HTTP/1.1 401"), head
    assert json.loads(body) == {"error_code": "ModelArts.81003", "error_msg": "Invalid authorization header."}


def test_x_forwarded_for_is_read_from_the_right(platform):
    """Item 15: the left-most X-Forwarded-For value is whatever the caller wrote; the tests trust 127.0.0.1."""
    project, key = _tenant(platform)
    body = {"model": CHAT, "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}
    for forwarded in ("1.2.3.4, 203.0.113.50", "evil-value"):
        assert _post(platform, key, "/v1/chat/completions", body, **{"X-Forwarded-For": forwarded}).status_code == 200
    rows = _records(platform, project, 2)
    assert [r["client_ip"] for r in rows] == ["203.0.113.50", ""]
