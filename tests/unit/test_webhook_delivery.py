"""Webhook delivery against real local servers: a server that never answers and one that answers forever
cost one bounded attempt each (a total deadline, a bounded read), and a refused destination is never
contacted. Before, timeouts were per read: a slow or endless answer held the reconciler's loop."""

from __future__ import annotations

import http.server
import socket
import ssl
import subprocess
import threading
import time

import pytest

from cluster.runtime import webhooks
from cluster.settings import get_settings

pytestmark = pytest.mark.unit


@pytest.fixture
def allow_loopback(monkeypatch):
    monkeypatch.setenv("MAAS_WEBHOOK_ALLOW", "127.0.0.1")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def _server(handler) -> tuple[int, threading.Event]:
    """A TCP server on 127.0.0.1 whose every connection is given to `handler(conn)` on a thread."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    seen = threading.Event()

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            seen.set()
            threading.Thread(target=handler, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return listener.getsockname()[1], seen


def _silent(conn: socket.socket) -> None:
    time.sleep(30)  # reads nothing, answers nothing
    conn.close()


def _drip(conn: socket.socket) -> None:
    conn.recv(65536)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n")
    try:
        while True:  # an endless body, a byte at a time, slowly: every read succeeds within a read timeout
            conn.sendall(b"x")
            time.sleep(0.05)
    except OSError:
        conn.close()


def _flood(conn: socket.socket) -> None:
    conn.recv(65536)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n")
    try:
        while True:  # an endless body, as fast as it goes
            conn.sendall(b"y" * 65536)
    except OSError:
        conn.close()


def test_a_server_that_never_answers_costs_one_deadline(allow_loopback):
    port, _ = _server(_silent)
    started = time.monotonic()
    assert webhooks.post_once(f"http://127.0.0.1:{port}/hook", {"x": 1}) == "timed out"
    assert time.monotonic() - started < webhooks.DEADLINE_S + 2


def test_an_endless_slow_answer_is_cut_at_the_deadline(allow_loopback):
    port, _ = _server(_drip)
    started = time.monotonic()
    assert webhooks.post_once(f"http://127.0.0.1:{port}/hook", {"x": 1}) == "timed out"
    assert time.monotonic() - started < webhooks.DEADLINE_S + 2


def test_an_endless_fast_answer_is_read_only_a_few_kib(allow_loopback):
    port, _ = _server(_flood)
    started = time.monotonic()
    assert webhooks.post_once(f"http://127.0.0.1:{port}/hook", {"x": 1}) is None  # 200: delivered
    assert time.monotonic() - started < 3


def test_a_refused_destination_is_never_contacted():
    get_settings.cache_clear()  # no MAAS_WEBHOOK_ALLOW: loopback is refused
    port, seen = _server(_silent)
    assert "private, loopback or link-local" in webhooks.post_once(f"http://127.0.0.1:{port}/", {})
    time.sleep(0.2)
    assert not seen.is_set()


# -- DNS rebinding: the connection goes to the address that was checked -------------------------------------
class _Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.hosts.append(self.headers.get("Host"))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def _hook_server(address: str, port: int = 0) -> http.server.ThreadingHTTPServer:
    server = http.server.ThreadingHTTPServer((address, port), _Hook)
    server.hosts = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def rebinding_dns(monkeypatch):
    """A DNS whose answer for hook.test changes after the first question (127.0.0.1, then 127.0.0.2), as a
    rebinding attacker's name server does; every other name resolves as usual."""
    real, asked = socket.getaddrinfo, []

    def getaddrinfo(host, port, *args, **kwargs):
        if host != "hook.test":
            return real(host, port, *args, **kwargs)
        asked.append(host)
        return real("127.0.0.1" if len(asked) == 1 else "127.0.0.2", port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return asked


def test_a_name_that_rebinds_after_the_check_is_still_called_at_the_checked_address(allow_loopback,
                                                                                     rebinding_dns):
    """Before, the name was checked, then resolved again by the HTTP client to connect: the second answer
    (127.0.0.2, not allowed) got the POST. Now the checked 127.0.0.1 gets it, with the URL's Host."""
    checked = _hook_server("127.0.0.1")
    port = checked.server_address[1]
    rebound = _hook_server("127.0.0.2", port)
    try:
        assert webhooks.post_once(f"http://hook.test:{port}/hook", {"x": 1}) is None
    finally:
        checked.shutdown(), rebound.shutdown()
    assert checked.hosts == [f"hook.test:{port}"] and rebound.hosts == []
    assert rebinding_dns == ["hook.test"]  # one resolution per attempt


def test_tls_to_a_pinned_address_names_the_urls_host_in_sni_and_checks_its_certificate(allow_loopback,
                                                                                      rebinding_dns, tmp_path):
    """The TLS handshake at the checked address carries the URL's host as its server name, and the certificate
    is checked against that name: a self-signed one is refused."""
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=hook.test", "-keyout", str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem")],
                   check=True, capture_output=True)
    names: list[str | None] = []
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    context.sni_callback = lambda sock, name, ctx: names.append(name)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            context.wrap_socket(conn, server_side=True).recv(1)
        except (ssl.SSLError, OSError):
            pass
        conn.close()

    threading.Thread(target=serve, daemon=True).start()
    port = listener.getsockname()[1]
    assert webhooks.post_once(f"https://hook.test:{port}/hook", {"x": 1}) == "could not connect"
    listener.close()
    assert names == ["hook.test"]
