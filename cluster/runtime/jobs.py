"""Tuning and compression jobs as Ray Jobs: submit, stop, and a thread that turns what Ray and the job's
status.json say into the job's status (and registers the job's model when it completes).

The entrypoints are the same commands a user can run with plain `ray job submit`:
`python -m train_jobs.finetune --config <output_dir>/job.yaml` (the platform's venv) and
`.venv-compress/bin/python -m quantize.compress --config <output_dir>/job.yaml` (the compression venv).
"""

from __future__ import annotations

import logging
import shlex
import sys
import threading
import time
from typing import Callable, Union
from pathlib import Path

from sqlalchemy import delete, select

from cluster.runtime.accounting import reload_accounting_blocking
from cluster.runtime.health import loop_health
from cluster.runtime.events import Notification, deliver, loop_trouble, record_job_event
from cluster.runtime.running_time import count_running, running_seconds
from cluster.settings import get_settings
from cluster.state.db import ACTIVE_JOB_STATES, CompressionJob, JobEvent, TuningJob, now, session_scope
from serve_apps import ray_compat
from train_jobs.progress import read_status

log = logging.getLogger("maas.jobs")
ACTIVE = set(ACTIVE_JOB_STATES)
EVENT_RETENTION_S = 30 * 86400
Job = Union[TuningJob, CompressionJob]
# What a completed job's outputs become: (session, job row, status.json's outputs) -> the model version id.
OnCompleted = Callable[[object, Job, dict], str]


def job_client():
    """A JobSubmissionClient for this cluster's dashboard, found through the GCS (works inside any worker)."""
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(f"http://{ray_compat.dashboard_address()}")


def submit(job: Job, config_path: Path, module: str = "train_jobs.finetune", python: str = sys.executable,
           memory_mb: int | None = None) -> str:
    """Start one run of the job (the first, or a continue). Returns the Ray Job's submission id.
    The driver asks for CPU and memory (MAAS_JOB_DRIVER_CPUS, `memory_mb` or MAAS_JOB_DRIVER_MEMORY_MB) as any
    task does, so Ray places it on a node with room for it: drivers asking nothing all pile onto the head."""
    settings = get_settings()
    submission_id = f"{job.id}-run{job.runs + 1}"
    job_client().submit_job(
        entrypoint=f"{shlex.quote(python)} -m {module} --config {shlex.quote(str(config_path))}",
        submission_id=submission_id,
        entrypoint_num_cpus=settings.job_driver_cpus,
        entrypoint_memory=(memory_mb or settings.job_driver_memory_mb) * 2**20,
        runtime_env={"env_vars": {"DS_ACCELERATOR": "cpu", "TOKENIZERS_PARALLELISM": "false"}},
        metadata={"maas_job": job.id, "project": job.project_id})
    return submission_id


def stop(submission_id: str) -> None:
    job_client().stop_job(submission_id)


def logs(job: Job) -> str:
    client = job_client()
    parts = []
    for run in range(1, job.runs + 1):
        try:
            parts.append(f"===== run {run} =====\n" + client.get_job_logs(f"{job.id}-run{run}"))
        except RuntimeError:  # a run Ray no longer knows (cluster restarted)
            parts.append(f"===== run {run} =====\n(logs not available)\n")
    return "".join(parts)


def searched_logs(job: Job, search: str = "") -> str:
    """The job's logs, or only the lines containing `search` (case-insensitive): tuning and compression alike."""
    text = logs(job)
    if search:
        text = "\n".join(line for line in text.splitlines() if search.lower() in line.lower()) + "\n"
    return text


def _status_from(ray_status: str, phase: str, current: str) -> str:
    if ray_status == "PENDING":
        return "pending"
    if ray_status == "RUNNING":
        return "stopping" if current == "stopping" else ("running" if phase == "running" else "starting")
    if ray_status == "SUCCEEDED":
        return "completed"
    if ray_status == "STOPPED":
        return "stopped"
    return "failed"


class JobSync(threading.Thread):
    """Every few seconds: for each active job, read Ray's status and status.json, and update the row."""

    def __init__(self, database_url: str, on_completed: dict[type, OnCompleted], interval_s: float = 2.0,
                 client: Callable[[], object] = None):
        super().__init__(name="maas-job-sync", daemon=True)
        self.url, self.on_completed, self.interval_s = database_url, on_completed, interval_s
        self.client = client or job_client  # what answers get_job_info (Ray's JobSubmissionClient)
        self.woken = threading.Event()
        self.health = loop_health("job_sync")
        self._troubles: dict[str, str] = {}  # job id -> the trouble last written on it
        self._pruned_at = 0.0

    def run(self) -> None:
        while True:
            try:
                self.sync()
                self.health.ok()
            except Exception as exc:  # never let one bad pass stop the loop
                log.exception("job sync failed")
                self.health.failed(exc)
            self.woken.wait(self.interval_s)
            self.woken.clear()

    def sync(self) -> None:
        notes: list[Notification] = []
        registered = False
        with session_scope(self.url) as session:
            jobs = [job for table in self.on_completed
                    for job in session.scalars(select(table).where(table.status.in_(ACTIVE))).all()]
            if not jobs:
                return
            client = self.client()
            for job in jobs:
                if not job.submission_id:
                    continue
                before = job.status
                try:
                    with session.begin_nested():  # one job's failure rolls back that job only
                        self._sync_one(session, client, job)
                except Exception as exc:
                    log.exception("syncing job %s failed", job.id)
                    self.health.failed(exc, f"job {job.id}")
                    self._trouble(session, job, exc)
                    continue
                self._troubles.pop(job.id, None)
                if job.status != before:
                    job.updated_at = now()
                    registered |= job.status == "completed"
                    note = record_job_event(session, job, job.status_reason or f"{before} -> {job.status}.")
                    if note is not None:
                        notes.append(note)
            if time.time() - self._pruned_at > 60:
                session.execute(delete(JobEvent).where(JobEvent.at < now() - EVENT_RETENTION_S))
                self._pruned_at = time.time()
        if registered:  # the new version is callable (a LoRA on its base) once the accounting actor knows it
            reload_accounting_blocking(log)
        deliver(self.url, notes)  # each outcome is written on its event, as for services

    def _trouble(self, session, job: Job, exc: Exception) -> None:
        """Write the failure on the job, as an event (once per kind of failure, not every pass)."""
        message = loop_trouble(exc, "check this job's progress")
        if self._troubles.get(job.id) == message:
            return
        self._troubles[job.id] = message
        try:
            with session.begin_nested():
                record_job_event(session, job, message, status_changed=False)
        except Exception:  # the database itself is the trouble: /health and the log have it
            log.exception("recording the trouble of job %s failed", job.id)

    def _sync_one(self, session, client, job: Job) -> None:
        try:
            info = client.get_job_info(job.submission_id)
        except RuntimeError:
            job.status, job.status_reason = "failed", "the Ray job was lost (cluster restarted?)"
        else:
            self._follow(session, job, info)
        _count_running_time(job)
        if job.status == "running" and job.auto_stop_s and _ran(job) >= job.auto_stop_s:
            stop(job.submission_id)
            job.status = "stopping"
            job.status_reason = f"Auto-stopped after {_ran(job)} s of running (auto-stop {job.auto_stop_s} s)" + (
                "; continue resumes from the latest checkpoint." if isinstance(job, TuningJob) else ".")

    def _follow(self, session, job: Job, info) -> None:
        """The job's status from Ray's and status.json's; on completion, register its output."""
        status_file = read_status(Path(job.output_dir))
        new = _status_from(info.status.value, status_file.get("phase", ""), job.status)
        if new == job.status:
            return
        job.status = new
        if new == "failed":
            report = status_file.get("report")
            job.status_reason = (status_file.get("error") or info.message or "failed") + (
                "\n" + "\n".join(f"line {r['line']}, {r['field']}: {r['reason']}" for r in report)
                if report else "")
        if new == "completed":
            try:
                job.result_version = self.on_completed[type(job)](session, job, status_file.get("outputs", {}))
            except Exception as exc:  # the training worked; say why its model could not be kept
                log.exception("registering the output of %s failed", job.id)
                job.status, job.status_reason = "failed", f"registering the trained model failed: {exc}"


def _ran(job: Job) -> int:
    return running_seconds(job.run_seconds, job.running_since)


def _count_running_time(job: Job) -> None:
    for column, value in count_running(job.status == "running", job.run_seconds, job.running_since, now()).items():
        setattr(job, column, value)


_sync: JobSync | None = None


def start(database_url: str, on_completed: dict[type, OnCompleted]) -> JobSync:
    global _sync
    if _sync is None or not _sync.is_alive():
        _sync = JobSync(database_url, on_completed)
        _sync.start()
    return _sync


def wake() -> None:
    if _sync is not None:
        _sync.woken.set()
