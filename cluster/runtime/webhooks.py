"""Webhooks: the one sender of every notification (service and tuning-job status changes), and the check of a
URL when it is saved.

A URL must be http(s) with a host and a valid port; private, loopback, link-local and other non-public
destinations are refused unless an admin allows them (`MAAS_WEBHOOK_ALLOW`: hosts or networks). Delivery
runs on a pool of threads of its own (never on the reconciler or job-sync loop), from a bounded queue per
project, so one tenant's slow or silent URL delays only its own notifications. Each attempt resolves the host
once, checks every address, and connects to the checked address itself (the Host header and TLS
SNI/certificate name stay the URL's host), so a DNS answer that changes between the check and the connect
(rebinding) cannot redirect it; each attempt has a total deadline and reads at most a few KiB of the answer;
failures are retried with backoff; the outcome goes to the caller's callback as a short text that says nothing
about the far side beyond the HTTP status.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Callable

import httpx

from cluster.runtime.health import loop_health
from cluster.settings import get_settings

log = logging.getLogger("maas.webhooks")
DEADLINE_S = 5.0  # one attempt, connect to last byte
MAX_RESPONSE_BYTES = 4096
RETRY_DELAYS_S = (1.0, 4.0)  # after the first attempt
SENDERS = 4  # threads; a project uses one at a time
PER_PROJECT_QUEUE = 200  # deliveries a project may have waiting


class WebhookRefused(ValueError):
    """The URL is not one the platform will call."""


def _allowed(address: ipaddress.IPv4Address | ipaddress.IPv6Address, host: str) -> bool:
    allow = get_settings().webhook_allow_list
    if host.lower() in allow["hosts"] or any(address in net for net in allow["networks"]):
        return True
    return address.is_global and not address.is_multicast


def _addresses(host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    try:
        return [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        return [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]


def check_url(url: str, resolve: bool = False) -> str:
    """The URL if the platform may call it; WebhookRefused saying why not. With `resolve`, a host name must
    resolve, and to allowed addresses only (checked again at every delivery: DNS can change)."""
    _checked(url, resolve)
    return url


def _checked(url: str, resolve: bool) -> tuple[httpx.URL, list[ipaddress.IPv4Address | ipaddress.IPv6Address]]:
    """The parsed URL and the addresses it resolved to, every one of them allowed."""
    try:
        parsed = httpx.URL(url)
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
    except (httpx.InvalidURL, ValueError, TypeError):
        raise WebhookRefused("notify_url is not a valid URL") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise WebhookRefused("notify_url must be an http:// or https:// URL with a host")
    if not 1 <= port <= 65535:
        raise WebhookRefused("notify_url has an invalid port")
    if parsed.userinfo:
        raise WebhookRefused("notify_url must not carry credentials")
    try:
        addresses = _addresses(parsed.host, port) if resolve or _is_ip(parsed.host) else []
    except OSError:
        raise WebhookRefused("notify_url's host does not resolve") from None
    for address in addresses:
        if not _allowed(address, parsed.host):
            raise WebhookRefused("notify_url points to a private, loopback or link-local address; an admin can "
                                 "allow it with MAAS_WEBHOOK_ALLOW")
    return parsed, addresses


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        return False


def post_once(url: str, payload: dict) -> str | None:
    """One attempt within DEADLINE_S; the failure as a short text, None when delivered. The connection goes
    to the address that was checked, never to a second resolution of the name."""
    try:
        parsed, addresses = _checked(url, resolve=True)
    except WebhookRefused as refused:
        return str(refused)
    if not addresses:
        return "notify_url's host does not resolve"
    target, headers, extensions = _pinned(parsed, addresses[0])
    deadline = time.monotonic() + DEADLINE_S
    try:
        with httpx.Client(timeout=DEADLINE_S, follow_redirects=False) as client:
            request = client.build_request("POST", target, json=payload, headers=headers, extensions=extensions)
            response = client.send(request, stream=True)
            try:
                read = 0
                for chunk in response.iter_raw():
                    read += len(chunk)
                    if read >= MAX_RESPONSE_BYTES or time.monotonic() > deadline:
                        break
                status = response.status_code
            finally:
                response.close()
    except httpx.TimeoutException:
        return "timed out"
    except (httpx.HTTPError, OSError):
        return "could not connect"
    if time.monotonic() > deadline:
        return "timed out"
    return None if status < 300 else f"HTTP {status}"


def _pinned(parsed: httpx.URL, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> tuple[httpx.URL, dict,
                                                                                                 dict]:
    """The URL with its host replaced by the checked address; the Host header and the TLS server name (SNI,
    and the name the certificate must carry) of the original host."""
    if _is_ip(parsed.host):
        return parsed, {}, {}
    host = parsed.host if parsed.port is None else f"{parsed.host}:{parsed.port}"
    extensions = {"sni_hostname": parsed.host} if parsed.scheme == "https" else {}
    return parsed.copy_with(host=str(address)), {"Host": host}, extensions


@dataclass
class Delivery:
    project_id: str
    url: str
    payload: dict
    on_done: Callable[[str | None], None] | None = None  # called with the last failure, or None
    attempt: int = 0
    not_before: float = field(default_factory=time.monotonic)


class WebhookSender:
    """Sends every project's deliveries, retrying each with backoff; never blocks the caller.

    Each project has a queue of its own (at most `per_project` waiting: more are dropped, counted in `dropped`,
    logged, and reported to their callback) and at most one delivery in flight, in order; `senders` threads take
    the projects in turn. A project whose URL never answers holds one sender at a time, for one deadline per
    attempt: the other projects' notifications go out on the others meanwhile, and its retries wait without one.
    """

    def __init__(self, senders: int = SENDERS, per_project: int = PER_PROJECT_QUEUE):
        self.per_project = per_project
        self.dropped: Counter[str] = Counter()  # per project, since the start
        self.health = loop_health("webhooks")
        self._queues: dict[str, deque[Delivery]] = {}  # projects with deliveries waiting, in turn order
        self._in_flight: set[str] = set()
        self._changed = threading.Condition()
        self._threads = [threading.Thread(target=self._run, name=f"maas-webhooks-{i}", daemon=True)
                         for i in range(senders)]
        for thread in self._threads:
            thread.start()

    def is_alive(self) -> bool:
        return all(thread.is_alive() for thread in self._threads)

    def send(self, project_id: str, url: str, payload: dict,
             on_done: Callable[[str | None], None] | None = None) -> None:
        with self._changed:
            waiting = self._queues.setdefault(project_id, deque())
            full = len(waiting) >= self.per_project
            if full:
                self.dropped[project_id] += 1
                dropped = self.dropped[project_id]
            else:
                waiting.append(Delivery(project_id, url, payload, on_done))
                self._changed.notify()
        if full:
            if dropped == 1 or dropped % 100 == 0:  # a flood of events must not flood the log too
                log.warning("project %s's webhook queue is full (%d waiting); %d notifications dropped so far",
                            project_id, self.per_project, dropped)
            if on_done is not None:
                on_done("the project's notification queue is full")

    def _run(self) -> None:
        while True:
            delivery = self._next()
            try:
                retry = self._deliver(delivery)
                self.health.ok()
            except Exception as exc:  # one bad delivery must not end a sender
                log.exception("webhook delivery failed")
                self.health.failed(exc)
                retry = False
            with self._changed:
                self._in_flight.discard(delivery.project_id)
                if retry:  # first in its project's queue again: a project's notifications keep their order
                    self._queues.setdefault(delivery.project_id, deque()).appendleft(delivery)
                self._changed.notify_all()

    def _next(self) -> Delivery:
        """The first due delivery of the next project in turn that has none in flight (waits for one)."""
        with self._changed:
            while True:
                now, wake_at = time.monotonic(), None
                for project_id, waiting in list(self._queues.items()):
                    if not waiting:
                        del self._queues[project_id]
                    elif project_id not in self._in_flight:
                        if waiting[0].not_before <= now:
                            self._queues[project_id] = self._queues.pop(project_id)  # to the end of the turn
                            self._in_flight.add(project_id)
                            return waiting.popleft()
                        due = waiting[0].not_before
                        wake_at = due if wake_at is None else min(wake_at, due)
                self._changed.wait(None if wake_at is None else wake_at - now)

    @staticmethod
    def _deliver(delivery: Delivery) -> bool:
        """One attempt; True when it is to be tried again later."""
        failure = post_once(delivery.url, delivery.payload)
        if failure is not None and delivery.attempt < len(RETRY_DELAYS_S) and not failure.startswith("notify_url"):
            delivery.not_before = time.monotonic() + RETRY_DELAYS_S[delivery.attempt]
            delivery.attempt += 1
            return True
        if delivery.on_done is not None:
            delivery.on_done(failure)
        return False


_sender: WebhookSender | None = None
_lock = threading.Lock()


def sender() -> WebhookSender:
    """This process's sender, started on first use."""
    global _sender
    with _lock:
        if _sender is None or not _sender.is_alive():
            _sender = WebhookSender()
        return _sender
