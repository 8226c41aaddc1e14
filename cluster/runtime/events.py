"""Events of services and of tuning/compression jobs, and their webhook notifications (sent by
`runtime.webhooks`, off the reconciler's and job-sync's loops); a delivery's outcome is written on its event."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Union

from sqlalchemy import select
from sqlalchemy.orm import Session

from cluster.runtime.webhooks import sender
from cluster.state.db import CompressionJob, JobEvent, Service, ServiceEvent, TuningJob, now, session_scope

EventTable = Union[type[ServiceEvent], type[JobEvent]]


@dataclass(frozen=True)
class Notification:
    event_id: int
    url: str
    payload: dict
    table: EventTable = ServiceEvent


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


def record_job_event(session: Session, job: TuningJob | CompressionJob, message: str,
                     status_changed: bool = True) -> Notification | None:
    """Write a JobEvent at the job's status; return the notification to send if the job asked for it."""
    event = JobEvent(job_id=job.id, project_id=job.project_id, status=job.status, message=message[:1024], at=now())
    session.add(event)
    session.flush()
    if not (status_changed and job.notify_url and job.status in (job.notify_events or [])):
        return None
    return Notification(event.id, job.notify_url, {
        "event_id": event.id, "job_id": job.id, "job_name": job.name, "project_id": job.project_id,
        "status": job.status, "message": event.message, "at": event.at}, JobEvent)


def job_events(session: Session, job: TuningJob | CompressionJob) -> list[JobEvent]:
    """Newest first."""
    return list(session.scalars(select(JobEvent).where(JobEvent.project_id == job.project_id,
                                                       JobEvent.job_id == job.id).order_by(JobEvent.id.desc())))


def deliver(database_url: str, notifications: list[Notification]) -> None:
    """Hand each event to the webhook sender; its outcome is written on the event when known."""
    for note in notifications:
        sender().send(note.payload["project_id"], note.url, note.payload,
                      on_done=partial(_delivered, database_url, note.table, note.event_id))


def _delivered(database_url: str, table: EventTable, event_id: int, failure: str | None) -> None:
    with session_scope(database_url) as session:
        event = session.get(table, event_id)
        if event is not None:
            event.notified = failure is None
            if failure:
                event.message = f"{event.message} (notification failed: {failure})"[:1024]


def loop_trouble(exc: BaseException, what: str) -> str:
    """What a loop's failure on one item says on that item: the kind of error only (the details, which may
    name the platform's internals, are in the control plane's log and /health)."""
    return (f"The platform could not {what} on its last attempt ({type(exc).__name__}); it tries again "
            "every few seconds. An admin finds the details in the control plane's log.")
