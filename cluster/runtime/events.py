"""Service events and webhook delivery: one sender for every notification the platform makes (service
status changes, tuning-job status changes), with one timeout."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import httpx
from sqlalchemy.orm import Session

from cluster.state.db import Service, ServiceEvent, now, session_scope

log = logging.getLogger("maas.events")
WEBHOOK_TIMEOUT_S = 3.0


def post_webhook(url: str, payload: dict) -> str | None:
    """One JSON POST; the failure as text (None when delivered), never raised."""
    try:
        response = httpx.post(url, json=payload, timeout=WEBHOOK_TIMEOUT_S)
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}"
    return None if response.status_code < 300 else f"HTTP {response.status_code}"


@dataclass(frozen=True)
class Notification:
    event_id: int
    url: str
    payload: dict


def record_event(session: Session, row: Service, status: str, message: str,
                 status_changed: bool = True) -> Notification | None:
    """Write a ServiceEvent; return the notification to send if the service asked for this status."""
    event = ServiceEvent(service_id=row.id, project_id=row.project_id, status=status, message=message[:1024],
                         at=now())
    session.add(event)
    session.flush()
    if not (status_changed and row.notify_url and status in (row.notify_events or [])):
        return None
    return Notification(event.id, row.notify_url, {
        "event_id": event.id, "service_id": row.id, "service_name": row.name, "project_id": row.project_id,
        "status": status, "message": event.message, "at": event.at})


def deliver(database_url: str, notifications: list[Notification]) -> None:
    """POST each service event to its webhook; the outcome is written on the event."""
    for note in notifications:
        failure = post_webhook(note.url, note.payload)
        with session_scope(database_url) as session:
            event = session.get(ServiceEvent, note.event_id)
            if event is not None:
                event.notified = failure is None
                if failure:
                    event.message = f"{event.message} (notification failed: {failure})"[:1024]
