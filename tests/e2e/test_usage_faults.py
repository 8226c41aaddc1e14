"""Usage that is never lost when a stream breaks (issue 11): the client that goes away mid-stream and the engine
replica killed mid-stream are each recorded once, with the tokens the engine had generated for the call (its
running usage, continuous_usage_stats), and the client of a dead engine gets an error event and the stream's
end instead of a dropped connection. The database outage and the re-sends: tests/db/test_settlement_once.py."""

from __future__ import annotations

import json
import os
import signal
import time

import httpx
import pytest
from sqlalchemy import create_engine, text

from serve_apps.witness import TOTALS_EVERY_S
from tests.helpers import actor_pids, engine_connections, replica_pids, wait_for, wait_status

CHAT = "tiny-chat"


def _records(platform, key_id: str) -> list[dict]:
    with create_engine(platform.database_url).connect() as conn:
        return [dict(r._mapping) for r in conn.execute(text("SELECT * FROM usage_records WHERE key_id = :k"),
                                                          {"k": key_id})]


def _wait_records(platform, key_id: str, count: int, timeout: float = 30) -> list[dict]:
    deadline = time.time() + timeout
    while True:
        rows = _records(platform, key_id)
        if len(rows) >= count or time.time() > deadline:
            return rows
        time.sleep(0.3)


def _stream(platform, key: str, model: str, max_tokens: int, running: bool = False):
    """A streamed chat call; `running`: every chunk carries the engine's running usage (continuous_usage_stats),
    so the client knows how many tokens it received (a token whose text is empty sends no content chunk)."""
    body = {"model": model, "stream": True, "max_tokens": max_tokens, "ignore_eos": True,
            "messages": [{"role": "user", "content": "tell me a long story"}]}
    if running:
        body["stream_options"] = {"include_usage": True, "continuous_usage_stats": True}
    return httpx.stream("POST", platform.base_url + "/v1/chat/completions", timeout=120,
                        headers={"Authorization": f"Bearer {key}"}, json=body)


def _has_content(line: str) -> bool:
    """A chunk that carries generated text (the first chunk only says role: assistant, with empty content)."""
    if not line.startswith("data: {"):
        return False
    choices = json.loads(line[6:]).get("choices") or [{}]
    return bool((choices[0].get("delta") or {}).get("content"))


def _content_chunks(lines) -> tuple[int, list[dict]]:
    """(content chunks seen, every other event) of an SSE line iterator, until it ends."""
    content, others = 0, []
    for line in lines:
        if not line.startswith("data: "):
            continue
        if line == "data: [DONE]":
            others.append({"done": True})
            continue
        event = json.loads(line[6:])
        if event.get("choices") and event["choices"][0].get("delta", {}).get("content"):
            content += 1
            assert "usage" not in event  # the running usage the gateway asks for is not sent on
        else:
            others.append(event)
    return content, others


def _received(lines) -> tuple[int, list[dict]]:
    """(tokens the client received, every event) of a stream asked with `running`, until it ends: the running usage
    of the last chunk with a choice (the one with finish_reason is always sent). A token whose text is empty sends
    no content chunk, so counting content chunks falls short of the tokens by a random few."""
    events = [{"done": True} if line == "data: [DONE]" else json.loads(line[6:])
              for line in lines if line.startswith("data: ")]
    return max([(e.get("usage") or {}).get("completion_tokens") or 0 for e in events if e.get("choices")]
               or [0]), events


def _engine_generated(platform, since: float, model: str) -> int:
    answer = platform.admin().get("/usage/audit", params={"since": since})
    assert answer.status_code == 200, answer.text
    return next((r["engine_generation_tokens"] for r in answer.json()["models"] if r["model"] == model), 0)


def _engine_count_at_rest(platform, since: float, model: str, at_least: int) -> int:
    """The engine's own generation count once it has reached `at_least` and stopped moving: engines push it every
    TOTALS_EVERY_S when it moved, so a count unchanged for longer than that is one the engine no longer adds to."""
    seen: list[tuple[float, int]] = []

    def at_rest() -> int | None:
        seen.append((time.time(), _engine_generated(platform, since, model)))
        count = seen[-1][1]
        changed = max((t for (t, c), (_, after) in zip(seen, seen[1:]) if after != c), default=seen[0][0])
        return count if count >= at_least and time.time() - changed > TOTALS_EVERY_S + 1 else None

    return wait_for(at_rest, 60, f"{model}'s engine count at rest at {at_least} or more", interval=1)


def test_a_client_that_goes_away_mid_stream_is_recorded_499_with_its_tokens(platform):
    key = platform.new_key("goes-away")
    delivered, since = 0, time.time()
    with _stream(platform, key["key"], CHAT, 1500) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            delivered += _has_content(line)
            if delivered == 40:
                break  # the client goes away, 40 tokens in
    [row] = _wait_records(platform, key["id"], 1)
    time.sleep(1)
    assert len(_records(platform, key["id"])) == 1  # once
    assert row["status_code"] == 499 and row["error_code"] == "MaaS.0499"
    assert row["prompt_tokens"] > 0
    assert 40 <= row["completion_tokens"] < 1500, row  # what the engine generated up to the last chunk relayed
    # vLLM aborted the request: its own counter stopped near the cut (1,500 tokens take tiny-chat ~8 s here, so
    # a request left running would bring it to rest far above 400).
    generated = _engine_count_at_rest(platform, since, CHAT, row["completion_tokens"])
    assert row["completion_tokens"] <= generated < 400, (row, generated)


def test_a_whole_stream_still_bills_the_engines_final_count(platform):
    key = platform.new_key("whole-stream")
    with _stream(platform, key["key"], CHAT, 64, running=True) as response:
        received, events = _received(response.iter_lines())
    assert events[-1] == {"done": True} and received == 64, events[-3:]
    [row] = _wait_records(platform, key["id"], 1)
    assert row["status_code"] == 200 and row["completion_tokens"] == 64


def _replica_pids(platform, app: str) -> list[int]:
    return replica_pids(platform.env, app)


def _haproxies(managers: list[int]) -> list:
    """The HAProxy processes Serve's HAProxy managers (these actor pids) run."""
    import psutil

    return [p for m in managers for p in psutil.Process(m).children(recursive=True) if p.name() == "haproxy"]


def _config_of(haproxy) -> str:
    return haproxy.cmdline()[haproxy.cmdline().index("-f") + 1]


def test_haproxy_answers_on_the_platforms_port_with_the_callers_address_added(platform):
    """The platform's Ray nodes start with RAY_NODE_ENV: Serve runs HAProxy (not its proxy actor) on the platform's
    port, started through maas-haproxy, whose copy of Ray's configuration sets X-Maas-Peer; the gateway replica's
    own uvicorn (direct ingress) leaves X-Forwarded-For alone."""
    import psutil

    [manager] = actor_pids(platform.env, "HAProxyManager")
    haproxies = _haproxies([manager])
    assert haproxies
    for haproxy in haproxies:
        config = _config_of(haproxy)
        assert config.endswith(".maas"), haproxy.cmdline()
        assert "http-request set-header X-Maas-Peer %[src]" in open(config).read()
    listening = {c.laddr.port for p in haproxies for c in p.net_connections("tcp") if c.status == psutil.CONN_LISTEN}
    assert httpx.URL(platform.base_url).port in listening
    for pid in _replica_pids(platform, "maas-gateway") + _replica_pids(platform, CHAT):
        environ = psutil.Process(pid).environ()
        assert environ.get("FORWARDED_ALLOW_IPS") == ""
        assert environ.get("RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD") == "0"  # one loop (serve_apps.settings)


@pytest.mark.disruptive  # kills HAProxy: the platform's port is closed until Serve starts it again
def test_haproxy_killed_mid_stream_records_the_call_and_the_port_comes_back(platform):
    """SIGKILL to HAProxy while it relays a stream: the client's connection drops; the gateway replica sees its
    caller gone and records the call once (499, the tokens relayed); Serve's health check of the HAProxy manager
    fails and a new HAProxy, through maas-haproxy again, answers on the platform's port."""
    key = platform.new_key("haproxy-dies")
    before = {p.pid for p in _haproxies(actor_pids(platform.env, "HAProxyManager"))}
    assert before
    delivered, killed_at = 0, None
    with pytest.raises(httpx.HTTPError):
        with _stream(platform, key["key"], CHAT, 1500) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                delivered += _has_content(line)
                if delivered == 20 and killed_at is None:
                    for pid in before:
                        os.kill(pid, signal.SIGKILL)
                    killed_at = time.time()
    assert killed_at is not None and delivered >= 20
    [row] = _wait_records(platform, key["id"], 1)
    assert row["status_code"] == 499 and row["error_code"] == "MaaS.0499", row
    assert 20 <= row["completion_tokens"] < 1500, row
    deadline, answer = time.time() + 240, None
    while time.time() < deadline:
        try:
            answer = httpx.get(platform.base_url + "/v1/models", timeout=10,
                               headers={"Authorization": f"Bearer {key['key']}"})
            if answer.status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(1)
    assert answer is not None and answer.status_code == 200, answer
    back_after = time.time() - killed_at
    now = _haproxies(actor_pids(platform.env, "HAProxyManager"))
    assert now and not {p.pid for p in now} & before
    for haproxy in now:
        assert _config_of(haproxy).endswith(".maas"), haproxy.cmdline()
    assert len(_records(platform, key["id"])) == 1  # still once
    print(f"the platform's port answered again {back_after:.0f} s after HAProxy was killed")


def test_an_engine_replicas_own_http_port_answers_nothing(platform):
    """With HAProxy every app's ingress replica listens on a port of its own (30000-31000), engines too: vLLM's
    OpenAI app there would answer without a key. MaasLLMServer's HTTP app answers every call 404. (An engine
    replica may hold other listeners in that range that do not speak HTTP/1: Serve's gRPC.)"""
    import psutil

    def listeners(pid: int) -> set[int]:
        return {c.laddr.port for c in psutil.Process(pid).net_connections("tcp")
                if c.status == psutil.CONN_LISTEN and 30000 <= c.laddr.port <= 31000}

    # A replica that replaces one an earlier test killed opens its port when its initialization ends.
    deadline = time.time() + 300
    while not (engines := _replica_pids(platform, CHAT)) or not all(
            "initialize" not in psutil.Process(pid).cmdline()[0] and listeners(pid) for pid in engines):
        assert time.time() < deadline, [(pid, psutil.Process(pid).cmdline()[:1]) for pid in engines]
        time.sleep(2)
    for engine in engines:
        answered, ports = 0, listeners(engine)
        for port in ports:
            try:
                answer = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=30, json={
                    "model": CHAT, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
            except httpx.RemoteProtocolError:  # Serve's gRPC server on a port of that range
                continue
            assert answer.status_code == 404 and answer.json()["error_code"] == "MaaS.0404", answer.text
            assert httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=30).status_code == 404
            answered += 1
        assert answered == 1, (engine, ports)


def test_a_stream_after_its_first_batch_travels_on_a_connection_of_its_own(platform):
    """serve_apps.direct_stream: while a stream runs, a gateway replica holds a connection to the engine replica's
    stream server (besides Ray's own connections, which stay); the stream's end closes it."""
    key = platform.new_key("direct-stream")
    engines, gateways = _replica_pids(platform, CHAT), _replica_pids(platform, "maas-gateway")
    assert engines and gateways
    with _stream(platform, key["key"], CHAT, 300, running=True) as response:
        lines, delivered = response.iter_lines(), 0
        for line in lines:
            delivered += _has_content(line)
            if delivered == 10:
                break
        during = engine_connections(gateways, engines)
        received, events = _received(lines)
    assert events[-1] == {"done": True} and received == 300, events[-3:]  # the stream arrived whole
    deadline = time.time() + 10
    while (stream := during - engine_connections(gateways, engines)) == set() and time.time() < deadline:
        time.sleep(0.5)
    assert len(stream) == 1, (during, stream)  # the stream's own connection, gone with the stream
    [row] = _wait_records(platform, key["id"], 1)
    assert row["status_code"] == 200 and row["completion_tokens"] == 300


def _audit_is_exact_on_a_fresh_engine(platform, key: dict, service_id: str) -> None:
    """`maas usage audit`: calls that end normally are billed exactly what the engine's own counters say."""
    with _stream(platform, key["key"], "fault-svc", 48) as response:
        _content_chunks(response.iter_lines())
    answer = platform.client(key["key"]).chat.completions.create(
        model="fault-svc", max_tokens=16, messages=[{"role": "user", "content": "hi"}])
    assert answer.usage.completion_tokens > 0
    _wait_records(platform, key["id"], 2)
    expected = 48 + answer.usage.completion_tokens
    wait_for(lambda: _engine_generated(platform, 0, service_id) == expected, 30,  # pushed every TOTALS_EVERY_S
             f"the engine's own count of {service_id} at {expected} tokens")
    done = platform.maas("usage", "audit", "--range", "30m", "--json", check=False)
    [row] = [r for r in json.loads(done.stdout)["models"] if r["model"] == service_id]
    assert row["calls"] == 2 and row["engine_generation_tokens"] == expected, row
    assert row["prompt_difference"] == 0 and row["completion_difference"] == 0, row


@pytest.mark.disruptive  # kills a service's engine replica
def test_an_engine_killed_mid_stream_ends_the_stream_with_an_error_and_is_recorded(platform):
    view = platform.maas_json("services", "deploy", "fault-svc", "--model", CHAT)
    try:
        view = wait_status(platform, "fault-svc", {"Running"})
        [pid] = _replica_pids(platform, view["app_name"])
        key = platform.new_key("engine-dies")
        _audit_is_exact_on_a_fresh_engine(platform, platform.new_key("audit"), view["id"])
        delivered, received, events = 0, 0, []  # content chunks; tokens by the last running usage the client got
        with _stream(platform, key["key"], "fault-svc", 1500, running=True) as response:
            for line in response.iter_lines():  # the whole stream: it must end, not drop
                if not line.startswith("data: "):
                    continue
                events.append({"done": True} if line == "data: [DONE]" else json.loads(line[6:]))
                received = max(received, (events[-1].get("usage") or {}).get("completion_tokens") or 0)
                delivered += _has_content(line)
                if delivered == 30 and pid:
                    os.kill(pid, signal.SIGKILL)
                    pid = 0
        assert events[-1] == {"done": True}, events[-3:]
        errors = [e for e in events if e.get("object") == "error"]
        assert errors and errors[0]["code"] == 503, events[-3:]
        [row] = _wait_records(platform, key["id"], 1)
        assert row["status_code"] == 503 and row["error_code"] == "MaaS.0503"
        assert received >= 30 and row["completion_tokens"] == received, (row, received, delivered)
    finally:
        platform.maas("services", "delete", "fault-svc", "--confirm", "DELETE", check=False)


@pytest.mark.disruptive  # kills one of the two gateway replicas
def test_a_gateway_killed_mid_stream_loses_no_call_the_engines_count_settles_them(platform):
    """8 streams over the two gateway replicas; one replica is killed (SIGKILL) once every stream has 20
    tokens. The streams it carried break; the engine's report settles each of them (502, MaaS.0502) after the
    gateway's lease, with at least the tokens the client saw; the others complete as usual. 8 records, once."""
    import concurrent.futures as cf
    import threading

    key = platform.new_key("gateway-dies")
    started = threading.Barrier(9)
    results: list[tuple[int, bool]] = []

    def stream() -> tuple[int, bool]:
        delivered, done, waited = 0, False, False
        try:
            with _stream(platform, key["key"], CHAT, 400) as response:
                for line in response.iter_lines():
                    delivered += _has_content(line)
                    done = done or line == "data: [DONE]"
                    if delivered == 20 and not waited:
                        waited = True
                        started.wait(timeout=120)
        except httpx.HTTPError:
            pass
        finally:
            if not waited:
                started.abort()
        return delivered, done

    gateways, engines = _replica_pids(platform, "maas-gateway"), _replica_pids(platform, CHAT)
    assert len(gateways) == 2, gateways
    with cf.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(stream) for _ in range(8)]
        started.wait(timeout=120)
        # Serve's router may put every stream on one replica: kill the one that holds the most (each stream has
        # a connection of its own to the engine's stream port, serve_apps.direct_stream)
        carried = [pid for pid, _, _ in engine_connections(gateways, engines)]
        killed = max(gateways, key=carried.count)
        os.kill(killed, signal.SIGKILL)
        results = [f.result(timeout=300) for f in futures]
    broken = [delivered for delivered, done in results if not done]
    assert broken, f"no stream went through the killed replica: {results}"
    _wait_records(platform, key["id"], 8, timeout=90)
    wait_for(lambda: _in_flight(platform, key["id"]) == 0, 60, "every call of the key settled (none in flight)")
    rows = _records(platform, key["id"])
    assert len(rows) == 8, (rows, results)  # every call, once
    lost = sorted(r["completion_tokens"] for r in rows if r["status_code"] == 502)
    assert len(lost) == len(broken) and all(r["error_code"] == "MaaS.0502" for r in rows if r["status_code"] == 502)
    assert all(billed >= seen for billed, seen in zip(lost, sorted(broken))), (lost, broken)
    assert all(r["prompt_tokens"] > 0 and r["completion_tokens"] <= 400 for r in rows)
    assert sorted(r["completion_tokens"] for r in rows if r["status_code"] == 200) == [400] * (8 - len(broken))
    # Serve replaces the killed replica: two gateway replicas run again, the killed one not among them.
    wait_for(lambda: _running_gateways(platform) == 2 and killed not in _replica_pids(platform, "maas-gateway"),
             180, "a new gateway replica in place of the killed one")
    assert len(_replica_pids(platform, "maas-gateway")) == 2


def _in_flight(platform, key_id: str) -> float:
    """The accounting's gauge of the key's admitted calls not yet settled (maas_requests_in_flight)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(platform.base_url + "/metrics", timeout=30,
                     headers={"Authorization": f"Bearer {platform.admin_key}"}).text
    return sum(sample.value for family in text_string_to_metric_families(text)
               if family.name == "maas_requests_in_flight" for sample in family.samples
               if sample.labels.get("key_id") == key_id)


def _running_gateways(platform) -> int:
    deployments = platform.maas_json("status")["applications"]["maas-gateway"]["deployments"]
    return sum(d["replicas"].get("RUNNING", 0) for d in deployments.values())


def test_a_cpu_engine_is_its_replica_and_one_engine_core_process_with_the_worker_inside(platform):
    """serve_apps.model_app: on CPU the model runs in vLLM's engine core process (executor "uni"), not in a
    worker process of its own (benchmarks/engine_process.py: start-up 32 vs 50 s, 740 MiB less)."""
    import psutil

    for pid in _replica_pids(platform, CHAT) + _replica_pids(platform, "all-minilm-l6-v2"):
        tree = [p for p in psutil.Process(pid).children(recursive=True)
                if "multiprocessing.resource_tracker" not in " ".join(p.cmdline())]
        assert len(tree) == 1, [" ".join(p.cmdline()) for p in tree]  # the engine core, no worker below it
        assert tree[0].num_threads() > 1  # it runs (its busy loop, torch's threads), not only waits
