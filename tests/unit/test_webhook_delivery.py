"""Webhook delivery against real local servers: a server that never answers and one that answers forever
cost one bounded attempt each (a total deadline, a bounded read), and a refused destination is never
contacted. Before, timeouts were per read: a slow or endless answer held the reconciler's loop."""

from __future__ import annotations

import socket
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
