"""Trust, round 2 (issue 26), the cluster's own doors: after the session's `maas up` (MAAS_HOST=127.0.0.1), what
the platform's replica processes listen on, and what a caller who reaches an engine's ports can do there.

Ray 2.60 decides some of it: a node's IP is never loopback (`ray start --node-ip-address=127.0.0.1` is resolved to
the machine's address, ray/scripts/scripts.py:855 `resolve_ip_for_localhost`), and Serve's handles dial a
replica's gRPC server at that IP, so Serve's gRPC and the engines' direct-stream ports can be bound to the node's IP
(not to 127.0.0.1); each Ray worker's own core-worker gRPC port (Ray core, in the worker port range) listens on every
interface and cannot be moved (it is Ray's token that guards it, RAY_AUTH_MODE=token)."""

from __future__ import annotations

import ipaddress
import socket
import time

import httpx
import psutil
import pytest

from tests.helpers import SLOT, replica_pids

pytestmark = pytest.mark.e2e
CHAT = "tiny-chat"
# tests.helpers.start_ray_head's worker ports; free ports the kernel hands out (32768-60999) may fall in it too
WORKER_PORTS = range(30000 + 3000 * SLOT, 33000 + 3000 * SLOT)


def _listeners(pid: int) -> list[tuple[str, int]]:
    """(address, port) of every TCP socket the process and its children listen on (an IPv4 address bound by gRPC on
    an IPv6 socket shows as ::ffff:a.b.c.d)."""
    process = psutil.Process(pid)
    return sorted({(c.laddr.ip.removeprefix("::ffff:"), c.laddr.port)
                   for p in [process, *process.children(recursive=True)] for c in p.net_connections("tcp")
                   if c.status == psutil.CONN_LISTEN})


def _replica_listeners(platform) -> dict[str, dict[int, list[tuple[str, int]]]]:
    apps = {app: replica_pids(platform.env, app) for app in ("maas-gateway", "maas-control", CHAT)}
    assert all(apps.values()), apps
    return {app: {pid: _listeners(pid) for pid in pids} for app, pids in apps.items()}


def _wildcard(address: str) -> bool:
    return ipaddress.ip_address(address).is_unspecified


def _node_ip(platform) -> str:
    import ray

    return ray.util.get_node_ip_address()  # this machine's address, as Ray's nodes here have it


def test_no_replica_port_listens_on_every_interface(platform):
    """Before: each replica's Serve gRPC server on [::] (any port), the engines' stream ports on the node's IP.
    Now every replica port listens on one address: the platform's HTTP ports (Serve's direct ingress, 30000-31000)
    on MAAS_HOST, Serve's gRPC and the stream ports on the node's IP; only Ray core's worker port is on all."""
    node_ip = _node_ip(platform)
    listeners = _replica_listeners(platform)
    print({app: by_pid for app, by_pid in listeners.items()})  # what each replica process listens on, for the log
    for app, by_pid in listeners.items():
        for pid, sockets in by_pid.items():
            core = [s for s in sockets if s[1] in WORKER_PORTS and _wildcard(s[0])]
            assert len(core) <= 1, (app, pid, sockets)  # Ray core's own port: the one left on every interface
            ours = [s for s in sockets if s not in core]
            assert not [s for s in ours if _wildcard(s[0])], (app, pid, sockets)
            http = [address for address, port in ours if 30000 <= port <= 31000 and address != node_ip]
            assert http == ["127.0.0.1"], (app, pid, sockets)  # Serve's direct ingress, on MAAS_HOST
            grpc_and_streams = [address for address in (a for a, _ in ours) if address != "127.0.0.1"]
            # Serve's gRPC on every replica, and on an engine its direct-stream server too
            assert set(grpc_and_streams) == {node_ip}, (app, pid, sockets)
            assert len(grpc_and_streams) >= (2 if app == CHAT else 1), (app, pid, sockets)


def _stream_whole(platform, key: str) -> tuple[int, float]:
    body = {"model": CHAT, "stream": True, "max_tokens": 40, "ignore_eos": True,
            "messages": [{"role": "user", "content": "count"}],
            "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
    started, last = time.time(), None
    with httpx.stream("POST", platform.base_url + "/v1/chat/completions", timeout=120, json=body,
                      headers={"Authorization": f"Bearer {key}"}) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]" and '"usage"' in line:
                last = line
    assert last is not None and '"completion_tokens":40' in last.replace(" ", ""), last
    return 40, time.time() - started


def test_idle_connections_to_an_engines_ports_keep_no_stream_out(platform):
    """A caller who can reach an engine replica opens 100 idle connections to each of its node-IP ports (the stream
    port among them): before, 64 of them locked every streamed call of that engine out of its direct stream (the
    65th connection, the gateway's, was closed). Now streams still arrive whole, and the idle connections get
    nothing."""
    key = platform.new_key("idle-flood")
    node_ip = _node_ip(platform)
    _stream_whole(platform, key["key"])  # warm
    idle: list[socket.socket] = []
    try:
        for pid in replica_pids(platform.env, CHAT):
            for address, port in _listeners(pid):
                if address == node_ip:  # Serve's gRPC and the stream port (Ray core's is on every interface)
                    for _ in range(100):
                        idle.append(socket.create_connection((address, port), timeout=5))
        assert len(idle) >= 200
        for _ in range(3):
            tokens, took = _stream_whole(platform, key["key"])
            assert tokens == 40 and took < 60
        received = []
        for conn in idle:
            conn.setblocking(False)
            try:
                received.append(conn.recv(64))
            except BlockingIOError:
                continue
            except ConnectionError:
                received.append(b"")
        # Nothing but Serve's gRPC server's HTTP/2 SETTINGS frame (type 4, sent to every new connection) and the
        # closing of the idle stream connections pushed out: no stream frame (B, E, X) reached any of them.
        assert all(data == b"" or (len(data) >= 9 and data[3] == 4) for data in received), received[:5]
        assert b"" in received  # the stream port closed the oldest idle connections to seat the gateway's
    finally:
        for conn in idle:
            conn.close()


def test_the_stream_port_refuses_a_wrong_secret_at_once(platform):
    """A connection that presents a secret that is no call's is closed as soon as its 32 characters are in."""
    node_ip = _node_ip(platform)
    ports = [port for pid in replica_pids(platform.env, CHAT) for address, port in _listeners(pid)
             if address == node_ip]
    closed = 0
    for port in ports:
        with socket.create_connection((node_ip, port), timeout=5) as conn:
            conn.sendall(b"0" * 32)
            conn.settimeout(0.5)
            try:
                data = conn.recv(64)
            except TimeoutError:  # Serve's gRPC server waits for more of an HTTP/2 preface: not the stream port
                continue
            except ConnectionError:
                data = b""
            if data == b"":
                closed += 1
    assert closed >= 1, ports  # the stream port, at least, closed on a wrong secret without sending a byte
    assert _stream_whole(platform, platform.new_key("after-guess")["key"])[0] == 40  # the port still serves
