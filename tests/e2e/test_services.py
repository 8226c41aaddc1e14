"""Model services (spec §4.5, §4.6) on the session's platform: the API's validation, then one real service
taken through deploy, calls, scale, QPS, upgrade, a lost Serve application, a killed replica, auto-stop with
webhook notifications, the product's service API, and delete. (The lifecycle rules and the reconciler's
decisions without a platform: tests/unit/test_service_lifecycle.py.)

Engine start-ups: deploy, scale-out (one more replica), upgrade (the new version), the lost application
(deployed again), the replica killed with kill -9 (replaced): five. The service is the module's (one deploy);
each test first brings it to the state it starts from (a no-op when the module runs in its order), so any
test also runs alone.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import openai
import pytest

from tests.helpers import (StreamReader, engine_connections, long_stream, replica_pids, serve_replicas, wait_for,
                           wait_status)

NAME = "测试服务-A_1"  # a CJK name: what the product allows, used as `model` by callers


# -- the API's validation (platform, no engine) ----------------------------------------------------------------
@pytest.mark.parametrize("body,field", [
    ({"name": "", "model": "tiny-chat"}, "name"),
    ({"name": "1abc", "model": "tiny-chat"}, "name"),
    ({"name": "_abc", "model": "tiny-chat"}, "name"),
    ({"name": "a b", "model": "tiny-chat"}, "name"),
    ({"name": "a.b", "model": "tiny-chat"}, "name"),
    ({"name": "A" * 65, "model": "tiny-chat"}, "name"),
    ({"name": "ok", "model": "tiny-chat", "description": "d" * 257}, "description"),
    ({"name": "ok", "model": "tiny-chat", "instances": 0}, "instances"),
    ({"name": "ok", "model": "tiny-chat", "instances": 17}, "instances"),
    ({"name": "ok", "model": "tiny-chat", "qps": 0}, "qps"),
    ({"name": "ok", "model": "tiny-chat", "auto_stop": "3d"}, "auto_stop"),
    ({"name": "ok", "model": "tiny-chat", "auto_stop": "30s"}, "auto_stop"),
    ({"name": "ok", "model": "tiny-chat", "notify_url": "http://x"}, "notify"),
    ({"name": "ok", "model": "tiny-chat", "notify_events": ["Running"]}, "notify"),
    ({"name": "ok", "model": "tiny-chat", "notify_url": "ftp://x", "notify_events": ["Running"]}, "notify_url"),
    ({"name": "ok", "model": "tiny-chat", "notify_url": "http://x", "notify_events": ["Sleeping"]}, "notify_events"),
    ({"name": "ok"}, "model"),
    ({"name": "ok", "model": "tiny-chat", "replicas": 2}, "replicas"),
])
def test_create_refuses_what_the_form_refuses(platform, body, field):
    response = platform.admin().post("/default/services", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error_code"] == "MaaS.0400" and field in response.json()["error_msg"]


def test_unknown_model_and_unknown_service(platform):
    admin = platform.admin()
    response = admin.post("/default/services", json={"name": "ok", "model": "no-such-model"})
    assert response.status_code == 404
    assert response.json() == {"error_code": "MaaS.0404", "error_msg": "Model 'no-such-model' does not exist."}
    response = admin.get("/default/services/nope")
    assert response.status_code == 404
    assert response.json() == {"error_code": "MaaS.0404", "error_msg": "Service 'nope' does not exist."}
    assert admin.post("/default/maas/services/nope", json={"action_type": "terminate"}).status_code == 404
    assert admin.get("/nowhere/services").status_code == 404


# -- one real service ----------------------------------------------------------------------------------------
class _Webhook(BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *_args):
        pass


@pytest.fixture(scope="module")
def webhook():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Webhook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/events", _Webhook.received
    server.shutdown()


@pytest.fixture(scope="module")
def service(platform, webhook) -> dict:
    url, _received = webhook
    created = platform.maas_json("services", "deploy", NAME, "--model", "tiny-chat", "--description", "e2e",
                                 "--notify-url", url, "--notify-events", "Running,Terminated")
    assert created["status"] == "Pending" and created["desired"] == "running" and created["moderation"] is True
    return wait_status(platform, created["id"], {"Running"})


@pytest.fixture(scope="module")
def caller(platform):
    return platform.client(platform.new_key("services")["key"])


def chat(client, **kwargs):
    return client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "hi"}],
                                          **({"max_tokens": 4} | kwargs))


def running_with(platform, instances: int) -> dict:
    """The module's service Running with `instances` instances. In the module's order it already is; a test
    run on its own scales it first."""
    view = wait_status(platform, NAME, {"Running"})
    if view["instances"] != instances:
        scaled = platform.admin().post(f"/default/services/{NAME}/scale",
                                       json={"instances": instances, "confirm": "YES"})
        assert scaled.status_code == 200, scaled.text
        view = wait_status(platform, NAME, {"Running"})
    assert view["instances"] == instances, view
    return view


def event_statuses(platform) -> set[str]:
    return {e["status"] for e in platform.admin().get(f"/default/services/{NAME}/events").json()}


def test_deployed_service_runs_on_its_own_serve_application(platform, service, caller):
    assert service["app_name"] == f"svc-{service['id']}-g1" and service["instances"] == 1
    assert [r["state"] for r in service["replicas"]] == ["RUNNING"]
    apps = platform.maas_json("status")["applications"]
    assert apps[service["app_name"]]["status"] == "RUNNING"
    assert "engine-tiny-chat" in apps[service["app_name"]]["deployments"]
    answer = chat(caller)
    assert answer.model == "tiny-chat"  # the engine's model id: the gateway renames only a LoRA version's answers
    assert answer.choices[0].message.content is not None
    assert NAME in {m.id for m in caller.models.list().data}
    listed = platform.maas_json("services", "list")
    assert [s["name"] for s in listed] == [NAME] and listed[0]["status"] == "Running"
    assert platform.maas_json("services", "get", NAME)["id"] == service["id"]


def test_duplicate_name_and_refused_start(platform, service):
    admin = platform.admin()
    again = admin.post("/default/services", json={"name": NAME, "model": "tiny-chat"})
    assert again.status_code == 409 and again.json()["error_code"] == "MaaS.0409"
    start = admin.post(f"/default/services/{NAME}/start")
    assert start.status_code == 409
    assert start.json()["error_msg"] == (f"Cannot start the service {NAME!r} while it is Running: start is "
                                         "allowed only when Failed, Terminated.")
    same = admin.post(f"/default/services/{NAME}/scale", json={"instances": 1})
    assert same.status_code == 409 and "already has 1 instance" in same.json()["error_msg"]


def test_another_project_cannot_call_the_name(platform, service):
    admin = platform.admin()
    assert admin.post("/projects", json={"id": "other"}).status_code in (201, 409)
    key = admin.post("/other/keys", json={"label": "svc-other", "description": "other"}).json()["key"]
    with pytest.raises(openai.NotFoundError) as missing:
        chat(platform.client(key))
    assert missing.value.status_code == 404
    assert admin.get(f"/other/services/{service['id']}").status_code == 404
    mine = platform.new_key("services-own")["key"]
    assert httpx.get(platform.base_url + f"/api/v1/other/services/{service['id']}",
                     headers={"Authorization": f"Bearer {mine}"}).status_code == 403


def test_scale_out_keeps_the_running_replica_and_the_stream(platform, service, caller):
    before = {r["id"] for r in running_with(platform, 1)["replicas"]}
    stream = StreamReader(chat(caller, **long_stream(2000)))  # outlasts the redeploy on a machine starting an engine
    wait_for(lambda: stream.arrivals, 60, "the stream's first chunk")
    scaled = platform.maas_json("services", "scale", NAME, "2")
    assert scaled["status"] == "Scale" and scaled["instances"] == 2
    during = chat(caller)  # Scale is a callable status
    assert during.choices[0].message.content is not None
    wait_for(lambda: platform.admin().get(f"/default/services/{NAME}").json()["replicas_target"] == 2, 60,
             "Serve's application redeployed with 2 replicas")
    redeployed = time.time()
    assert stream.whole(2000)
    assert stream.arrivals[-1] > redeployed  # the stream was still running across the redeploy
    view = wait_status(platform, NAME, {"Running"})
    after = {r["id"] for r in view["replicas"] if r["state"] == "RUNNING"}
    assert len(after) == 2 and before <= after  # the first replica was never restarted
    assert "Scale" in event_statuses(platform)


def test_scale_in_needs_yes_and_drains_the_stream(platform, service, caller):
    view = running_with(platform, 2)
    refused = platform.admin().post(f"/default/services/{NAME}/scale", json={"instances": 1})
    assert refused.status_code == 400
    assert refused.json() == {"error_code": "MaaS.0400",
                              "error_msg": "Scaling in (fewer instances) needs the confirmation text YES."}
    done = platform.maas("services", "scale", NAME, "1", check=False)
    assert done.returncode == 1 and "YES" in done.stderr
    # A stream on each replica, so that whichever one Serve stops is answering one: each stream's own connection
    # from a gateway replica to its engine replica (serve_apps.direct_stream) says which engine carries it.
    engines = replica_pids(platform.env, view["app_name"])
    gateways = replica_pids(platform.env, "maas-gateway")
    assert len(engines) == 2 and len(gateways) == 2, (engines, gateways)
    known, carriers = engine_connections(gateways, engines), {}
    while set(carriers.values()) != set(engines):
        assert len(carriers) < 6, f"Serve sent every stream to one replica: {carriers}"
        stream = StreamReader(chat(caller, **long_stream(1800)))  # outlasts the scale-in's start, ends in the drain
        # Past its first batch (through Serve), the rest comes over the stream's own connection.
        wait_for(lambda: len(stream.arrivals) >= 50, 60, "the new stream past its first batch")
        new = engine_connections(gateways, engines) - known
        [engine] = {e for _gateway, _port, e in new}  # the stream's (and Ray's own, if that gateway never called it)
        known |= new
        carriers[stream] = engine
    assert platform.maas_json("services", "scale", NAME, "1", "--confirm", "YES")["instances"] == 1
    [stopping] = wait_for(lambda: [r for r in serve_replicas(view["app_name"]) if r["state"] == "STOPPING"], 120,
                          "Serve stopping one of the two replicas", interval=0.2)
    draining = [s for s, engine in carriers.items() if engine == stopping["pid"]]
    assert draining and all(s.is_alive() for s in draining)  # the stopping replica was still answering them
    assert all(s.whole(1800) for s in carriers)
    wait_for(lambda: replica_pids(platform.env, view["app_name"]) == [p for p in engines if p != stopping["pid"]],
             120, "the stopped replica gone, the other one kept")
    assert len(wait_status(platform, NAME, {"Running"})["replicas"]) == 1


def test_qps_limit_applies_to_the_next_requests(platform, service, caller):
    wait_status(platform, NAME, {"Running"})
    assert platform.maas_json("services", "set-qps", NAME, "1")["qps"] == 1
    time.sleep(1.1)

    def one(_):
        try:
            chat(caller, max_tokens=1)
            return 200, None
        except openai.APIStatusError as exc:
            return exc.status_code, exc.response.json()

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(one, range(6)))
    codes = [code for code, _ in results]
    assert 1 <= codes.count(200) <= 2 and codes.count(429) >= 4, results
    body = next(body for code, body in results if code == 429)
    assert body == {"error_code": "MaaS.0429",
                    "error_msg": "Too many requests, exceeded the service's limit of 1 requests per second."}
    assert platform.maas_json("services", "set-qps", NAME, "1000")["qps"] == 1000
    time.sleep(1.1)
    assert chat(caller).choices


def test_upgrade_serves_throughout_then_retires_the_old_version(platform, service, caller):
    wait_status(platform, NAME, {"Running"})
    view = platform.maas_json("services", "upgrade", NAME, "--version", "2")
    assert (view["status"], view["model_version"], view["generation"]) == ("Upgrade", "2", 2)
    assert view["app_name"] == f"svc-{service['id']}-g1"  # the old version answers until the new one is ready
    answered = 0
    deadline = time.time() + 420
    while time.time() < deadline:
        assert chat(caller).choices  # never refused or failed during the upgrade
        answered += 1
        current = platform.admin().get(f"/default/services/{NAME}").json()
        if current["status"] == "Running":
            break
        assert current["status"] == "Upgrade", current
        time.sleep(1)
    assert current["app_name"] == f"svc-{service['id']}-g2" and answered > 5
    assert chat(caller).choices
    deadline = time.time() + 120
    while f"svc-{service['id']}-g1" in platform.maas_json("status")["applications"] and time.time() < deadline:
        time.sleep(2)
    assert f"svc-{service['id']}-g1" not in platform.maas_json("status")["applications"]
    assert "Upgrade" in event_statuses(platform)


def test_a_lost_serve_application_is_deployed_again(platform, service, caller, webhook):
    _url, received = webhook
    app = wait_status(platform, NAME, {"Running"})["app_name"]
    script = f"import ray; from ray import serve; ray.init(); serve.delete({app!r}, _blocking=False)"
    done = subprocess.run([sys.executable, "-c", script], env=platform.env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    restarting = wait_status(platform, NAME, {"Restarting", "Deploying"}, timeout=60)
    assert restarting["status"] == "Restarting"
    view = wait_status(platform, NAME, {"Running"})
    assert view["app_name"] == app
    assert chat(caller).choices
    # Running again is notified like the first time: the webhook gets the Running event after the restart.
    events = platform.admin().get(f"/default/services/{NAME}/events").json()  # newest first
    restarted = max(e["id"] for e in events if e["status"] == "Restarting")
    back = min(e["id"] for e in events if e["status"] == "Running" and e["id"] > restarted)
    deadline = time.time() + 10
    while back not in {e["event_id"] for e in received} and time.time() < deadline:
        time.sleep(0.5)
    assert back in {e["event_id"] for e in received}, received


def test_a_dead_replica_is_replaced(platform, service, caller):
    import psutil

    view = wait_status(platform, NAME, {"Running"})
    app, before = view["app_name"], {r["id"] for r in view["replicas"]}
    victims = [p for p in psutil.process_iter(["cmdline"])
               if any(f"ServeReplica:{app}:" in part for part in p.info["cmdline"] or [])]
    assert victims, f"no replica process of {app}"
    for victim in victims:
        victim.kill()  # kill -9: the engine replica dies without any goodbye
    deadline, current = time.time() + 420, view
    while time.time() < deadline:
        current = platform.admin().get(f"/default/services/{NAME}").json()
        running = {r["id"] for r in current["replicas"] if r["state"] == "RUNNING"}
        if current["status"] == "Running" and running and not running & before:
            break
        time.sleep(1)
    assert current["status"] == "Running" and current["app_name"] == app, current
    assert {r["id"] for r in current["replicas"]}.isdisjoint(before), current  # a new replica took its place
    assert chat(caller).choices


def test_auto_stop_notifies_and_refuses_what_a_stopped_service_cannot_do(platform, service, caller, webhook):
    _url, received = webhook
    running = wait_status(platform, NAME, {"Running"})
    with sqlite3.connect(platform.home / "maas.db") as db:  # as if deployed with an auto-stop this long
        db.execute("UPDATE services SET auto_stop_s = ? WHERE id = ?", (running["running_seconds"] + 3, service["id"]))
    view = wait_status(platform, NAME, {"Terminated"}, timeout=120)
    assert view["status_reason"].startswith("Auto-stopped after") and view["app_name"] == ""
    with pytest.raises(openai.APIStatusError) as stopped:
        chat(caller)
    assert stopped.value.status_code == 503
    admin = platform.admin()
    for path, body in [("stop", None), ("scale", {"instances": 2}), ("qps", {"qps": 5}),
                       ("upgrade", {"model_version": "3"})]:
        refused = admin.post(f"/default/services/{NAME}/{path}", json=body)
        assert refused.status_code == 409 and "while it is Terminated" in refused.json()["error_msg"], path
    deadline = time.time() + 10
    while sum(e["status"] == "Terminated" for e in received) < 1 and time.time() < deadline:
        time.sleep(0.5)
    statuses = [e["status"] for e in received if e["service_id"] == service["id"]]
    # (every return to Running is notified too: test_a_lost_serve_application_is_deployed_again)
    assert statuses.count("Running") >= 1 and statuses[-1] == "Terminated", received
    assert "Auto-stopped" in received[-1]["message"] and received[-1]["service_name"] == NAME
    deadline = time.time() + 10
    while not (events := platform.maas_json("services", "events", NAME))[0]["notified"] and time.time() < deadline:
        time.sleep(0.5)
    assert events[0]["status"] == "Terminated" and events[0]["notified"] is True
    # (Scale, Upgrade and Restarting are checked by the tests that cause them)
    assert {"Pending", "Deploying", "Running", "Terminating", "Terminated"} <= {e["status"] for e in events}


def test_the_products_service_api_starts_and_stops(platform, service):
    admin = platform.admin()
    mirror = f"/default/maas/services/{service['id']}"
    if admin.get(mirror).json()["status"] != "Terminated":  # run on its own: stop the running service first
        assert admin.post(f"/default/services/{NAME}/stop").status_code == 200
        wait_status(platform, NAME, {"Terminated"}, timeout=120)
    assert admin.get(mirror).json()["status"] == "Terminated"
    assert admin.post(mirror, json={"action_type": "pause"}).status_code == 400
    assert admin.post(mirror, json={"action_type": "terminate"}).status_code == 409
    restarted = admin.post(mirror, json={"action_type": "restart"})
    assert restarted.status_code == 200 and restarted.json()["status"] == "Pending"
    assert admin.get(mirror).json()["status"] in {"Pending", "Deploying"}
    stopping = admin.post(mirror, json={"action_type": "terminate"})  # stop is allowed while queued/starting
    assert stopping.status_code == 200 and stopping.json()["status"] == "Terminating"
    assert wait_status(platform, service["id"], {"Terminated"}, timeout=120)["desired"] == "stopped"


def test_delete_needs_the_word_and_keeps_the_events(platform, service, caller):
    refused = platform.maas("services", "delete", NAME, check=False)
    assert refused.returncode == 1 and "DELETE" in refused.stderr
    deleting = platform.maas_json("services", "delete", NAME, "--confirm", "DELETE")
    assert deleting["status"] == "Deleting"
    deadline = time.time() + 120
    while platform.admin().get(f"/default/services/{service['id']}").status_code != 404:
        assert time.time() < deadline
        time.sleep(1)
    with pytest.raises(openai.NotFoundError):
        chat(caller)
    events = platform.admin().get(f"/default/services/{service['id']}/events").json()
    assert events[0]["status"] == "Deleted" and events[-1]["status"] == "Pending"
    assert NAME not in [s["name"] for s in platform.maas_json("services", "list")]
