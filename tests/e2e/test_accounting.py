"""The shared accounting actor through the real gateway (2 replicas): exact RPM, TPM reservations, QPS-free
preset rules, durable usage records, and a kill -9 of the actor under load (disruptive: it runs at the end of
the session)."""

from __future__ import annotations

import concurrent.futures as cf
import json
import subprocess
import threading
import time
import uuid

import httpx
import psutil
import pytest
from sqlalchemy import create_engine, text

from tests.helpers import BIN, DASHBOARD_PORT, wait_for

PROJECT = "acct"
EMBED = "all-minilm-l6-v2"
CHAT = "tiny-chat"


@pytest.fixture(scope="module")
def tenant(platform):
    """A project of its own, with its own key; the embedding preset made commercial and activated. Set up
    again for the disruptive test at the end of the session: hence a new key label each time."""
    admin = platform.admin()
    assert admin.post("/projects", json={"id": PROJECT}).status_code in (201, 409)
    key = admin.post(f"/{PROJECT}/keys", json={"label": f"acct-{uuid.uuid4().hex[:8]}",
                                                "description": "accounting tests"}).json()["key"]
    assert admin.put(f"/presets/{EMBED}", json={"kind": "commercial"}).status_code == 200
    assert admin.post(f"/{PROJECT}/presets/activate", json={"models": [EMBED]}).status_code == 200
    yield {"key": key, "admin": admin}
    admin.put(f"/presets/{EMBED}", json={"kind": "free"})
    admin.put(f"/presets/{CHAT}", json={"kind": "free"})


def _db(platform):
    return create_engine(platform.database_url)


def _records(platform, where: str, **params) -> list[dict]:
    with _db(platform).connect() as conn:
        return [dict(r._mapping) for r in conn.execute(text(f"SELECT * FROM usage_records WHERE {where}"), params)]


def _wait_records(platform, where: str, count: int, timeout: float = 30, **params) -> list[dict]:
    deadline = time.time() + timeout
    while True:
        rows = _records(platform, where, **params)
        if len(rows) >= count or time.time() > deadline:
            return rows
        time.sleep(0.2)


def _embed(platform, key: str, model: str, text_: str = "hello", **headers) -> httpx.Response:
    return httpx.post(platform.base_url + "/v1/embeddings", json={"model": model, "input": text_}, timeout=60,
                      headers={"Authorization": f"Bearer {key}", **headers})


def _endpoint(tenant, name: str, **limits) -> dict:
    response = tenant["admin"].post(f"/{PROJECT}/endpoints", json={"name": name, "service": EMBED, **limits})
    assert response.status_code == 201, response.text
    return response.json()


def test_gateway_runs_two_replicas(platform):
    report = platform.maas_json("status")
    gateway = report["applications"]["maas-gateway"]["deployments"]
    assert sum(d["replicas"].get("RUNNING", 0) for d in gateway.values()) == 2


def test_rpm_is_exact_across_gateway_replicas(platform, tenant):
    rpm, extra = 12, 10
    _endpoint(tenant, "rpm-exact", rpm=rpm, tpm=100_000)
    with cf.ThreadPoolExecutor(rpm + extra) as pool:
        answers = list(pool.map(lambda _: _embed(platform, tenant["key"], "rpm-exact"), range(rpm + extra)))
    codes = sorted(a.status_code for a in answers)
    assert codes.count(200) == rpm and codes.count(429) == extra, codes
    refused = next(a for a in answers if a.status_code == 429)
    assert refused.json() == {"error_code": "ModelArts.81101",
                              "error_msg": f"Too many requests, exceeded rate limit is {rpm} times per minute."}


def test_tpm_reserves_before_the_engine_and_reconciles_after(platform, tenant):
    ep = _endpoint(tenant, "tpm-small", rpm=1000, tpm=60)
    too_big = _embed(platform, tenant["key"], "tpm-small", "word " * 100)  # ≈126 tokens reserved > 60
    assert too_big.status_code == 429
    assert too_big.json() == {"error_code": "ModelArts.81103",
                              "error_msg": "Too many requests. exceeded rate limit is 60 tokens per minute."}
    ok = _embed(platform, tenant["key"], "tpm-small", "hi there")
    assert ok.status_code == 200
    real = ok.json()["usage"]["prompt_tokens"]
    # The reservation (bytes/4 + 1 = 3) was replaced by the engine's count: the window now holds `real`.
    rows = _wait_records(platform, "endpoint_id = :e AND status_code = 200", 1, e=ep["id"])
    assert rows[0]["prompt_tokens"] == real
    # Limits apply to the next request: lift the TPM and the big call passes.
    assert tenant["admin"].patch(f"/{PROJECT}/endpoints/tpm-small", json={"tpm": 10_000}).status_code == 200
    assert _embed(platform, tenant["key"], "tpm-small", "word " * 100).status_code == 200


def test_usage_record_fields(platform, tenant):
    client_ip = "203.0.113.7"
    answer = _embed(platform, tenant["key"], EMBED, "record me", **{"X-Forwarded-For": f"10.9.9.9, {client_ip}"})
    assert answer.status_code == 200
    rows = _wait_records(platform, "client_ip = :ip", 1, ip=client_ip)
    assert len(rows) == 1
    row = rows[0]
    assert (row["project_id"], row["model"], row["service_type"], row["service_id"]) == (
        PROJECT, EMBED, "commercial", EMBED)
    assert row["prompt_tokens"] == answer.json()["usage"]["prompt_tokens"] and row["status_code"] == 200
    assert row["latency_ms"] > 0 and row["key_id"] and not row["stream"]


def test_a_callers_own_peer_header_is_replaced_by_its_address(platform):
    """HAProxy (started through maas-haproxy) sets X-Maas-Peer to the address that called it, over whatever the
    caller sent: the record names the test's own address, not the one it wrote."""
    key = platform.new_key()
    platform.client(key["key"]).chat.completions.create(
        model=CHAT, messages=[{"role": "user", "content": "hi"}], max_tokens=2,
        extra_headers={"X-Maas-Peer": "203.0.113.66"})
    [row] = _wait_records(platform, "key_id = :k", 1, k=key["id"])
    assert row["client_ip"] == "127.0.0.1"


def test_stream_record_has_ttft_tpot_and_engine_usage(platform):
    key = platform.new_key()
    stream = platform.client(key["key"]).chat.completions.create(
        model=CHAT, messages=[{"role": "user", "content": "what color is the sky ?"}], max_tokens=12,
        temperature=0, stream=True, extra_body={"ignore_eos": True}, extra_headers={"X-Forwarded-For": "198.51.100.9"})
    chunks = list(stream)
    assert all(c.usage is None for c in chunks)  # the client did not ask for usage; the platform still counts
    [row] = _wait_records(platform, "key_id = :k", 1, k=key["id"])
    assert row["client_ip"] == "198.51.100.9" and row["stream"]
    assert row["completion_tokens"] == 12 and row["prompt_tokens"] > 0  # the engine's count (ignore_eos: all 12)
    # TTFT until the first chunk, then TPOT over the 11 tokens after it: within the call's latency.
    assert row["ttft_ms"] > 0 and row["tpot_ms"] > 0
    assert row["ttft_ms"] + 11 * row["tpot_ms"] <= row["latency_ms"] + 1e-6, row


def test_preset_rules(platform, tenant):
    admin, other = tenant["admin"], platform.new_key()["key"]  # a key of the default project
    # Commercial and not activated by the default project -> 81004.
    refused = _embed(platform, other, EMBED)
    assert refused.status_code == 401 and refused.json()["error_code"] == "ModelArts.81004"
    # Frozen -> 81006, for the project that activated it; unfreezing restores it.
    assert admin.post(f"/presets/{EMBED}/freeze", json={"project_id": PROJECT}).status_code == 200
    frozen = _embed(platform, tenant["key"], EMBED)
    assert (frozen.status_code, frozen.json()) == (401, {"error_code": "ModelArts.81006",
                                                         "error_msg": "The resource is frozen."})
    admin.post(f"/presets/{EMBED}/freeze", json={"project_id": PROJECT, "frozen": False})
    assert _embed(platform, tenant["key"], EMBED).status_code == 200
    # Free with an expiry in the past -> 81014 (403).
    admin.put(f"/presets/{CHAT}", json={"kind": "free", "expires_at": int(time.time()) - 1})
    answer = httpx.post(platform.base_url + "/v1/chat/completions", timeout=60,
                        headers={"Authorization": f"Bearer {other}"},
                        json={"model": CHAT, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
    assert (answer.status_code, answer.json()) == (403, {
        "error_code": "ModelArts.81014",
        "error_msg": "The free service has expired. You can subscribe commercial service."})
    # Free with a claimable quota: not claimed -> 81004; claimed -> works until the quota is used -> 81005.
    admin.put(f"/presets/{CHAT}", json={"kind": "free", "free_quota_tokens": 30})
    call = lambda: httpx.post(platform.base_url + "/v1/chat/completions", timeout=60,  # noqa: E731
                              headers={"Authorization": f"Bearer {other}"},
                              json={"model": CHAT, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16})
    assert call().json()["error_code"] == "ModelArts.81004"
    assert admin.post(f"/default/presets/{CHAT}/claim").status_code == 200
    used = 0
    while used < 30:
        answer = call()
        assert answer.status_code == 200, answer.text
        used += answer.json()["usage"]["total_tokens"]
        time.sleep(0.3)  # let the settlement land before the next admission
    spent = call()
    assert (spent.status_code, spent.json()) == (401, {"error_code": "ModelArts.81005",
                                                       "error_msg": "The free quota has been used up."})
    admin.put(f"/presets/{CHAT}", json={"kind": "free"})


def test_preset_bodies_refuse_unknown_fields(platform):
    admin, strict = platform.admin(), "acct-strict"  # a project of its own: a body dropped, not refused, shows here
    assert admin.post("/projects", json={"id": strict}).status_code in (201, 409)
    presets, standing = admin.get("/presets").json(), admin.get(f"/{strict}/presets").json()
    unknown = (400, {"error_code": "MaaS.0400", "error_msg": "color: Extra inputs are not permitted"})
    refused = [admin.put(f"/presets/{EMBED}", json={"kind": "commercial", "rpm": 7, "color": "red"}),
               admin.post(f"/presets/{EMBED}/freeze", json={"project_id": strict, "color": "red"}),
               admin.post(f"/{strict}/presets/activate", json={"models": [EMBED], "color": "red"})]
    assert [(r.status_code, r.json()) for r in refused] == [unknown] * 3
    assert admin.get("/presets").json() == presets and admin.get(f"/{strict}/presets").json() == standing


def _accounting_pid(platform) -> int:
    """The live actor's pid in the tests' own cluster (other clusters on the machine have theirs)."""
    done = subprocess.run([str(BIN / "ray"), "list", "actors", "-f", "class_name=AccountingActor", "-f", "state=ALIVE",
                           "--format", "json", "--address", f"http://127.0.0.1:{DASHBOARD_PORT}"],
                          env=platform.env, capture_output=True, text=True, timeout=60)
    actors = json.loads(done.stdout or "[]")
    assert len(actors) == 1, done.stdout + done.stderr
    return int(actors[0]["pid"])


@pytest.mark.disruptive  # kills the platform's one accounting actor
def test_kill_the_actor_under_load_loses_no_record_and_limits_hold(platform, tenant):
    ep = _endpoint(tenant, "kill-load", rpm=400, tpm=1_000_000)
    victim = psutil.Process(_accounting_pid(platform))
    answered, failed, stop = [], [], threading.Event()

    def traffic():
        while not stop.is_set():
            try:
                answer = _embed(platform, tenant["key"], "kill-load", "load")
            except httpx.HTTPError as exc:
                failed.append(str(exc))
                stop.wait(0.2)  # while the actor restarts: no busy loop on a 2-core machine
                continue
            (answered if answer.status_code == 200 else failed).append(answer.status_code)
            if answer.status_code != 200:
                stop.wait(0.2)

    with cf.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(traffic) for _ in range(4)]
        try:
            wait_for(lambda: len(answered) >= 20, 60, "20 calls answered before the kill")
            victim.kill()  # SIGKILL
            killed_at = len(answered)
            wait_for(lambda: len(answered) >= killed_at + 20, 120, "20 calls answered after the kill (a new actor)")
        finally:
            stop.set()
        for future in futures:
            future.result()
    assert answered, failed
    rows = _wait_records(platform, "endpoint_id = :e AND status_code = 200", len(answered), timeout=60, e=ep["id"])
    assert len(rows) == len(answered), (len(rows), len(answered), failed[:5])
    assert _accounting_pid(platform) != victim.pid
    # The restarted actor rebuilt the window from the records: with the RPM lowered to what was already used
    # plus 3, exactly 3 more calls pass this minute.
    used = len(_records(platform, "endpoint_id = :e AND status_code = 200 AND ts >= :t", e=ep["id"],
                        t=time.time() - 55))
    tenant["admin"].patch(f"/{PROJECT}/endpoints/kill-load", json={"rpm": used + 3})
    codes = [_embed(platform, tenant["key"], "kill-load").status_code for _ in range(6)]
    assert codes.count(200) == 3 and codes.count(429) == 3, codes


def _figures_of_records(rows: list[dict]) -> dict[tuple[str, str], float]:
    """What the accounting's metrics of a project must say, from its usage records: calls by status (a row may
    stand for several folded refusals: `calls`), and for the answered calls their tokens and how many were timed."""
    answered = [r for r in rows if r["status_code"] < 400]
    figures: dict[tuple[str, str], float] = {}
    for row in rows:
        key = ("maas_requests_total", str(row["status_code"]))
        figures[key] = figures.get(key, 0) + row["calls"]
    figures[("maas_tokens_total", "prompt")] = sum(r["prompt_tokens"] for r in answered)
    figures[("maas_tokens_total", "completion")] = sum(r["completion_tokens"] for r in answered)
    figures[("maas_request_latency_seconds_count", "")] = len(answered)
    figures[("maas_prompt_tokens_sum", "")] = sum(r["prompt_tokens"] for r in answered)
    figures[("maas_ttft_seconds_count", "")] = sum(r["ttft_ms"] is not None for r in answered)
    figures[("maas_tpot_seconds_count", "")] = sum(r["tpot_ms"] is not None for r in answered)
    return figures


def _figures_of_metrics(platform, project: str) -> dict[tuple[str, str], float]:
    from prometheus_client.parser import text_string_to_metric_families

    admin_only = {"Authorization": f"Bearer {platform.admin_key}"}  # /metrics names every project and key id
    text = httpx.get(platform.base_url + "/metrics", headers=admin_only, timeout=30).text
    wanted = {"maas_requests_total", "maas_tokens_total", "maas_request_latency_seconds_count",
              "maas_prompt_tokens_sum", "maas_ttft_seconds_count", "maas_tpot_seconds_count"}
    figures: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in wanted and sample.labels.get("project") == project:
                key = (sample.name, sample.labels.get("code") or sample.labels.get("kind") or "")
                figures[key] = figures.get(key, 0) + sample.value
    return figures


def test_usage_statistics_and_metrics_match_the_records(platform, tenant):
    # Failures of its own, whatever ran before: an RPM refusal (81101) and a TPM refusal (81103) on endpoints.
    _endpoint(tenant, "stats-rpm", rpm=1)
    assert [_embed(platform, tenant["key"], "stats-rpm").status_code for _ in range(2)] == [200, 429]
    _endpoint(tenant, "stats-tpm", rpm=1000, tpm=60)
    assert _embed(platform, tenant["key"], "stats-tpm", "word " * 100).status_code == 429
    # And a stream, for the TTFT and TPOT histograms.
    list(platform.client(tenant["key"]).completions.create(model=CHAT, prompt="the sky", max_tokens=4, stream=True,
                                                           extra_body={"ignore_eos": True}))
    # The metrics move when a call settles, its record is durable just after: poll until they agree. The actor
    # has lived since `maas up` (the kill test is disruptive: it runs later), so its metrics hold every call.
    deadline = time.time() + 30
    while (expected := _figures_of_records(rows := _records(platform, "project_id = :p", p=PROJECT))) != (
            measured := _figures_of_metrics(platform, PROJECT)):
        assert time.time() < deadline, (expected, measured)
        time.sleep(0.5)
    assert expected[("maas_ttft_seconds_count", "")] >= 1 and expected[("maas_requests_total", "429")] >= 2
    failed = [r for r in rows if r["status_code"] >= 400]
    summary = tenant["admin"].get(f"/{PROJECT}/usage/summary", params={"range": "today"}).json()
    totals = summary["totals"]
    assert totals == totals | {
        "calls": sum(r["calls"] for r in rows), "failures": sum(r["calls"] for r in failed),
        "prompt_tokens": sum(r["prompt_tokens"] for r in rows),
        "completion_tokens": sum(r["completion_tokens"] for r in rows),
        "total_tokens": sum(r["prompt_tokens"] + r["completion_tokens"] for r in rows)}, totals
    # The project's own key may read its usage: the same figures. The CLI prints the failures document.
    own = httpx.get(platform.base_url + f"/api/v1/{PROJECT}/usage/summary", params={"range": "today"},
                    headers={"Authorization": f"Bearer {tenant['key']}"})
    assert own.status_code == 200 and own.json()["totals"] == totals
    failures = platform.maas_json("usage", "failures", "--project", PROJECT, "--range", "today")
    by_code: dict[tuple[str, int], int] = {}
    for row in failed:
        key = (row["error_code"] or str(row["status_code"]), row["status_code"])
        by_code[key] = by_code.get(key, 0) + row["calls"]
    assert {(c["code"], c["status"]): c["count"] for g in failures["groups"] for c in g["codes"]} == by_code
    assert failures["total"] == sum(by_code.values())
    assert {"ModelArts.81101", "ModelArts.81103"} <= {code for code, _status in by_code}
    admin_only = {"Authorization": f"Bearer {platform.admin_key}"}
    metrics = httpx.get(platform.base_url + "/metrics", headers=admin_only).text
    assert tenant["key"] not in metrics and 'maas_requests_total{code="429",endpoint="' in metrics
