"""Service events, and their webhook notifications (sent by `runtime.webhooks`, off the reconciler's loop)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from sqlalchemy.orm import Session

from cluster.runtime.webhooks import sender
from cluster.state.db import Service, ServiceEvent, now, session_scope


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
    """Hand each service event to the webhook sender; its outcome is written on the event when known."""
    for note in notifications:
        sender().send(note.url, note.payload, on_done=partial(_delivered, database_url, note.event_id))


def _delivered(database_url: str, event_id: int, failure: str | None) -> None:
    with session_scope(database_url) as session:
        event = session.get(ServiceEvent, event_id)
        if event is not None:
            event.notified = failure is None
            if failure:
                event.message = f"{event.message} (notification failed: {failure})"[:1024]
