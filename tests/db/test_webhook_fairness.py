"""One tenant's webhook cannot hold back another's (cluster.runtime.webhooks, through cluster.runtime.events on a real
SQLite database and real HTTP servers on 127.0.0.1).

Before, one thread sent every project's notifications one after another: a URL that accepts and never answers
held each of its deliveries for a 5 s deadline, 3 attempts with backoff, and every other project's notifications
waited behind them (and behind the 10,000 it could queue). Now each project has its own bounded queue and at
most one delivery in flight, and a pool of senders takes the projects in turn."""

from __future__ import annotations

import http.server
import logging
import socket
import threading
import time

import pytest

from cluster.runtime import webhooks
from cluster.runtime.events import deliver, record_event
from cluster.settings import get_settings
from cluster.state.db import Project, Service, ServiceEvent, session_scope

pytestmark = pytest.mark.db
BOUND = 3


class Tarpit:
    """Accepts every connection and never answers (nor reads): each attempt costs the sender its whole deadline."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/hook"
        self.open, self.most_open, self.accepted = 0, 0, 0
        self._lock = threading.Lock()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._hold, args=(conn,), daemon=True).start()

    def _hold(self, conn: socket.socket) -> None:
        with self._lock:
            self.open, self.accepted = self.open + 1, self.accepted + 1
            self.most_open = max(self.most_open, self.open)
        conn.settimeout(0.1)
        while True:  # until the sender gives up and closes its side
            try:
                if conn.recv(65536) == b"":
                    break
            except TimeoutError:
                continue
            except OSError:
                break
        conn.close()
        with self._lock:
            self.open -= 1


class _Receiver(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        import json

        payload = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        self.server.arrived.append((time.monotonic(), payload["event_id"]))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def hooks(monkeypatch):
    """A tarpit and a receiver on 127.0.0.1 (allowed), and a fresh sender of 2 threads, 3 waiting per project."""
    monkeypatch.setenv("MAAS_WEBHOOK_ALLOW", "127.0.0.1")
    get_settings.cache_clear()
    receiver = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    receiver.arrived = []
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    tarpit = Tarpit()
    monkeypatch.setattr(webhooks, "_sender", webhooks.WebhookSender(senders=2, per_project=BOUND))
    yield tarpit, receiver
    receiver.shutdown()
    tarpit.listener.close()
    get_settings.cache_clear()


def _notify(url: str, service_id: str, statuses: list[str]) -> list[int]:
    """An event per status on the service, each asking for its webhook (as the reconciler records them); sent."""
    with session_scope(url) as session:
        service = session.get(Service, service_id)
        notes = [record_event(session, service, status, f"now {status}") for status in statuses]
    deliver(url, notes)
    return [note.event_id for note in notes]


def _event(url: str, event_id: int) -> ServiceEvent:
    with session_scope(url) as session:
        event = session.get(ServiceEvent, event_id)
        session.expunge(event)
        return event


def _eventually(check, within: float = 2.0) -> bool:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_a_tarpit_webhook_delays_only_its_own_project_and_its_queue_is_bounded(migrated, hooks, caplog):
    tarpit, receiver = hooks
    statuses = ["Deploying", "Running", "Stopped", "Failed", "Deleting"]
    with session_scope(migrated) as session:
        session.add_all([Project(id="pa", name="pa"), Project(id="pb", name="pb")])
        session.flush()
        session.add_all([Service(id="sa", project_id="pa", name="a", model_id="tiny-chat", notify_url=tarpit.url,
                                 notify_events=statuses),
                         Service(id="sb", project_id="pb", name="b", model_id="tiny-chat",
                                 notify_url=f"http://127.0.0.1:{receiver.server_address[1]}/hook",
                                 notify_events=statuses)])

    [first] = _notify(migrated, "sa", ["Deploying"])
    deadline = time.monotonic() + 5
    while tarpit.accepted == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert tarpit.accepted == 1  # project A's first notification hangs in the tarpit
    with caplog.at_level(logging.WARNING, logger="maas.webhooks"):
        flood = _notify(migrated, "sa", statuses[1:] * 2)  # 8 more: 3 wait, 5 are dropped at once
    dropped = flood[BOUND:]
    assert webhooks.sender().dropped["pa"] == len(dropped) == 5
    assert "project pa's webhook queue is full" in caplog.text
    for event_id in dropped:  # the tenant sees why on the event, as for any failed notification
        event = _event(migrated, event_id)
        assert event.notified is False and "notification queue is full" in event.message

    sent_at = time.monotonic()
    b_events = _notify(migrated, "sb", statuses[:BOUND])  # a burst within B's own bound
    deadline = sent_at + 3
    while len(receiver.arrived) < len(b_events) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [event_id for _, event_id in receiver.arrived] == b_events  # all of B's, in order
    assert max(at for at, _ in receiver.arrived) - sent_at < 2  # on time: not behind A's 5 s deadlines
    assert _eventually(lambda: all(_event(migrated, event_id).notified for event_id in b_events))

    hanging = _event(migrated, first)  # A's first is still in the tarpit (its deadline is 5 s): no outcome yet
    assert not hanging.notified and hanging.message == "now Deploying" and tarpit.open == 1
    assert tarpit.most_open == 1  # A never held more than one sender, whatever it had waiting
    assert webhooks.sender().dropped["pb"] == 0


def test_a_projects_notifications_keep_their_order_and_a_failed_one_is_retried_first(hooks, monkeypatch):
    """Delivery as before: a failed attempt is tried again after its backoff, and the project's later
    notifications wait for it (they never overtake it); the outcome goes to the callback."""
    tarpit, receiver = hooks
    monkeypatch.setattr(webhooks, "RETRY_DELAYS_S", (0.3, 0.3))
    failing = {"left": 1}
    real_post = webhooks.post_once

    def post_once(url: str, payload: dict) -> str | None:
        if payload["event_id"] == 1 and failing["left"]:
            failing["left"] -= 1
            return "HTTP 500"
        return real_post(url, payload)

    monkeypatch.setattr(webhooks, "post_once", post_once)
    outcomes: dict[int, str | None] = {}
    url = f"http://127.0.0.1:{receiver.server_address[1]}/hook"
    for event_id in (1, 2, 3):
        webhooks.sender().send("pc", url, {"event_id": event_id},
                               on_done=lambda failure, event_id=event_id: outcomes.__setitem__(event_id, failure))
    deadline = time.monotonic() + 5
    while len(outcomes) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert outcomes == {1: None, 2: None, 3: None}
    assert [event_id for _, event_id in receiver.arrived] == [1, 2, 3]
