"""The job-sync and reconciler loops write one item's trouble on that item (an event saying what kind of error,
not its text), once per kind of trouble, and go on with the others; a job's status change is an event of that
job, and its webhook's outcome is written on the event (before, a job's webhook failure was only logged, and a
loop error was only in the log and /health).

The job-sync thread runs here on a real SQLite database; Ray's job client is replaced by one that answers
Ray's own JobDetails for each submission (FAILED), since the db tier runs without a Ray cluster."""

from __future__ import annotations

import http.server
import threading
import time

import pytest
from ray.job_submission import JobDetails, JobStatus, JobType

from cluster.runtime.health import loop_health
from cluster.runtime.jobs import JobSync
from cluster.services.lifecycle import Snapshot
from cluster.services.reconciler import Reconciler
from cluster.settings import get_settings
from cluster.state.db import JobEvent, Service, ServiceEvent, TuningJob, session_scope

pytestmark = pytest.mark.db


class _Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(500)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


class _FailedJobs:
    """Answers what Ray's JobSubmissionClient answers for a job whose entrypoint failed."""

    def get_job_info(self, submission_id: str) -> JobDetails:
        return JobDetails(type=JobType.SUBMISSION, submission_id=submission_id, status=JobStatus.FAILED,
                          entrypoint="python -m train_jobs.finetune", message="the entrypoint exited with 1")


@pytest.fixture
def hook(monkeypatch):
    monkeypatch.setenv("MAAS_WEBHOOK_ALLOW", "127.0.0.1")
    get_settings.cache_clear()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    server.shutdown()
    get_settings.cache_clear()


def _job(job_id: str, output_dir, **values) -> TuningJob:
    return TuningJob(id=job_id, project_id="default", name=job_id, job_type="lora", model_ref="tiny-chat",
                     base_model="tiny-chat", dataset_path="/x", dataset_format="alpaca", params={},
                     output_model="out", output_dir=str(output_dir), status="running", submission_id=f"{job_id}-run1",
                     runs=1, **values)


def _events(url: str, job_id: str) -> list[JobEvent]:
    with session_scope(url) as session:
        rows = session.query(JobEvent).filter_by(job_id=job_id).order_by(JobEvent.id).all()
        session.expunge_all()
        return rows


def test_one_jobs_trouble_is_written_on_it_once_and_the_other_job_goes_on(migrated, tmp_path, hook):
    url = migrated
    bad, good = tmp_path / "bad", tmp_path / "good"
    bad.mkdir(), good.mkdir()
    (bad / "status.json").write_text("[]")  # valid JSON, not an object: reading it fails for this job only
    with session_scope(url) as session:
        session.add(_job("ft-bad", bad))
        session.add(_job("ft-good", good, notify_url=hook, notify_events=["failed"]))
    sync = JobSync(url, {TuningJob: lambda session, job, outputs: "mv-out"}, client=_FailedJobs)
    sync.sync()
    sync.sync()  # the same trouble again: not a second event
    with session_scope(url) as session:
        assert session.get(TuningJob, "ft-good").status == "failed"
        assert session.get(TuningJob, "ft-bad").status == "running"
    trouble = _events(url, "ft-bad")
    assert len(trouble) == 1 and trouble[0].status == "running" and not trouble[0].notified
    assert "could not check this job's progress on its last attempt (AttributeError)" in trouble[0].message
    assert "list" not in trouble[0].message and str(bad) not in trouble[0].message  # no internals
    assert "job ft-bad: AttributeError" in loop_health("job_sync").last_error
    deadline = time.time() + 30  # the webhook (answering 500) is retried twice, then its outcome is written
    while "notification failed" not in (done := _events(url, "ft-good"))[-1].message:
        assert time.time() < deadline, done[-1].message
        time.sleep(0.2)
    assert [e.status for e in done] == ["failed"]
    assert done[0].message == "the entrypoint exited with 1 (notification failed: HTTP 500)"
    assert not done[0].notified


def test_a_services_trouble_is_written_on_it_once_without_its_text(migrated):
    url = migrated
    with session_scope(url) as session:
        session.add(Service(id="svc-1", project_id="default", name="s1", model_id="tiny-chat", status="Running",
                            desired="running", instances=1))
    with session_scope(url) as session:
        snap = Snapshot.of(session.get(Service, "svc-1"))
    reconciler = Reconciler(url)
    for _ in range(3):
        reconciler._trouble(snap, KeyError("/root/.maas/secret-path"))
    reconciler._trouble(snap, TimeoutError("serve controller"))
    with session_scope(url) as session:
        events = [(e.status, e.message) for e in session.query(ServiceEvent).filter_by(service_id="svc-1")]
    assert [status for status, _ in events] == ["Running", "Running"]
    assert "(KeyError)" in events[0][1] and "(TimeoutError)" in events[1][1]
    assert not any("secret-path" in message or "controller" in message for _, message in events)
