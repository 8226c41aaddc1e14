"""A project's dataset uploads (spec §7.3): store them within the upload size and the project's storage and
count quotas, find the file a job names, list and delete them, validate one in a memory-capped child process,
and delete the uploads no job has named for MAAS_DATASET_EXPIRY_DAYS. The files are the state:
`<storage>/datasets/<project>/<ds-id>/<file name>`, and a folder's mtime is the last time a job named it.
No HTTP here."""

from __future__ import annotations

import logging
import os
import re
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import select
from sqlalchemy.orm import Session

from cluster.datasets.schemas import DatasetView
from cluster.projects import quotas as project_quotas
from cluster.runtime.health import loop_health
from cluster.settings import get_settings
from cluster.state.db import ACTIVE_JOB_STATES, CompressionJob, TuningJob, session_scope
from cluster.state.lookup import lock_project
from serve_apps.errors import PlatformError
from train_jobs.datasets import DatasetCheck, DatasetLimits
from train_jobs.datasets.isolated import check_isolated

log = logging.getLogger("maas.datasets")
_DATASET_ID = re.compile(r"ds-[0-9a-f]{12}")
_TUNING_DONE = ("completed", "failed")  # a stopped tuning job may continue: it still reads its dataset
EXPIRY_INTERVAL_S = 3600


def store_dataset(session: Session, project_id: str, filename: str | None, data: BinaryIO,
                  size: int | None = None) -> dict:
    """Keep an uploaded dataset file (at most MAAS_MAX_UPLOAD_MB, within the project's quotas); its id is what
    a job's `dataset` names. `size`, when known, is checked against the storage quota before a byte is copied."""
    limit = get_settings().max_upload_mb * 2**20
    project_quotas.check_datasets(session, project_id, len(_folders(project_id)))
    if size is not None:
        project_quotas.check_storage(session, project_id, size)
    dataset_id = "ds-" + uuid.uuid4().hex[:12]
    name = Path(filename or "dataset.jsonl").name
    if name in ("", ".", "..") or name.startswith("."):
        name = "dataset.jsonl"
    target = get_settings().datasets_dir(project_id) / dataset_id / name
    target.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    try:
        with target.open("wb") as out:
            while chunk := data.read(1 << 20):
                written += len(chunk)
                if written > limit:
                    raise PlatformError("MaaS.0413", limit=limit)
                out.write(chunk)
        lock_project(session, project_id)  # parallel uploads are counted one after another, each with the others
        project_quotas.check_datasets(session, project_id, len(_folders(project_id)) - 1)
        project_quotas.check_storage(session, project_id, 0)
    except BaseException:
        shutil.rmtree(target.parent, ignore_errors=True)
        raise
    return {"id": dataset_id, "path": str(target), "bytes": written}


def dataset_path(project_id: str, ref: str) -> Path:
    """An upload of this project (`ds-...`), or a file under a data root an admin configured
    (MAAS_DATA_ROOTS); nothing else: a job must not make the platform read any file it can. Naming an upload
    is a use of it: its expiry starts again."""
    if ref.startswith("ds-"):
        folder = _folder(project_id, ref)
        found = list(folder.glob("*"))
        if not found:
            raise PlatformError("MaaS.0404", what=f"Dataset {ref!r}")
        os.utime(folder)
        return found[0]
    path = Path(ref)
    resolved = path.resolve() if path.is_absolute() else None
    if resolved is None or not any(resolved.is_relative_to(root) for root in get_settings().data_root_dirs):
        raise PlatformError("MaaS.0403", reason=(
            "A dataset is an upload of this project (POST /datasets gives its id, ds-...) or a file under a data "
            "root the admin configured (MAAS_DATA_ROOTS); this path is neither."))
    if not resolved.is_file():
        raise PlatformError("MaaS.0404", what=f"Dataset file {ref!r}")
    return resolved


def limits() -> DatasetLimits:
    settings = get_settings()
    return DatasetLimits(max_rows=settings.dataset_max_rows,
                         max_unpacked_bytes=settings.dataset_max_unpacked_mb * 2**20)


def check(path: Path, fmt: str, kind: str = "sft") -> DatasetCheck:
    """The dataset's sample count and (first) errors, found by a child process whose memory is capped
    (MAAS_DATASET_CHECK_MEMORY_MB): no file can grow the control plane."""
    settings = get_settings()
    return check_isolated(path, fmt, kind, limits(), settings.dataset_check_memory_mb * 2**20,
                          settings.dataset_check_timeout_s)


def list_datasets(session: Session, project_id: str) -> list[DatasetView]:
    readers = _readers(session, project_id)
    return [_view(folder, readers.get(folder, [])) for folder in sorted(_folders(project_id), key=_uploaded_at)]


def delete_dataset(session: Session, project_id: str, dataset_id: str) -> None:
    folder = _folder(project_id, dataset_id)
    readers = _readers(session, project_id).get(folder)
    if readers:
        raise PlatformError("MaaS.0409", reason=f"Dataset {dataset_id!r} may still be read by job(s) "
                                                f"{', '.join(sorted(readers))}; delete or finish them first.")
    shutil.rmtree(folder, ignore_errors=True)


def expire_unused(session: Session, now: float | None = None) -> list[str]:
    """Delete every project's uploads that no job has named for MAAS_DATASET_EXPIRY_DAYS and that no job may
    still read; returns their ids."""
    oldest = (now or time.time()) - get_settings().dataset_expiry_days * 86400
    readers = _readers(session, None)
    removed = []
    for project in sorted(p.name for p in (get_settings().storage_dir / "datasets").glob("*") if p.is_dir()):
        for folder in _folders(project):
            if folder not in readers and _last_used(folder) < oldest:
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder.name)
    return removed


def _folder(project_id: str, dataset_id: str) -> Path:
    folder = get_settings().datasets_dir(project_id) / dataset_id
    if not _DATASET_ID.fullmatch(dataset_id) or not folder.is_dir():
        raise PlatformError("MaaS.0404", what=f"Dataset {dataset_id!r}")
    return folder


def _folders(project_id: str) -> list[Path]:
    root = get_settings().datasets_dir(project_id)
    return [f for f in root.glob("ds-*") if _DATASET_ID.fullmatch(f.name) and f.is_dir()] if root.is_dir() else []


def _uploaded_at(folder: Path) -> float:
    files = [f.stat().st_mtime for f in folder.glob("*") if f.is_file()]
    return files[0] if files else 0.0


def _last_used(folder: Path) -> float:
    try:
        return folder.stat().st_mtime
    except OSError:
        return 0.0


def _view(folder: Path, readers: list[str]) -> DatasetView:
    files = [f for f in folder.glob("*") if f.is_file()]
    stat = files[0].stat() if files else folder.stat()
    last_used = int(_last_used(folder))
    return DatasetView(id=folder.name, name=files[0].name if files else "", bytes=stat.st_size if files else 0,
                       created_at=int(stat.st_mtime), last_used_at=last_used, used_by=sorted(readers),
                       expires_at=None if readers else last_used + get_settings().dataset_expiry_days * 86400)


def _readers(session: Session, project_id: str | None) -> dict[Path, list[str]]:
    """Upload folder -> the jobs that may still read its file."""
    queries = [select(TuningJob.name, TuningJob.dataset_path).where(TuningJob.status.not_in(_TUNING_DONE)),
               select(CompressionJob.name, CompressionJob.dataset_path)
               .where(CompressionJob.status.in_(ACTIVE_JOB_STATES), CompressionJob.dataset_path.is_not(None))]
    if project_id is not None:
        queries = [queries[0].where(TuningJob.project_id == project_id),
                   queries[1].where(CompressionJob.project_id == project_id)]
    readers: dict[Path, list[str]] = {}
    for query in queries:
        for name, path in session.execute(query):
            readers.setdefault(Path(path).parent, []).append(name)
    return readers


class ExpirySweep(threading.Thread):
    """Every hour: delete the uploads no job has named for MAAS_DATASET_EXPIRY_DAYS."""

    def __init__(self, database_url: str):
        super().__init__(name="maas-dataset-expiry", daemon=True)
        self.url, self.health = database_url, loop_health("dataset_expiry")

    def run(self) -> None:
        while True:
            try:
                with session_scope(self.url) as session:
                    removed = expire_unused(session)
                if removed:
                    log.info("Deleted %d dataset uploads unused for %d days", len(removed),
                             get_settings().dataset_expiry_days)
                self.health.ok()
            except Exception as exc:  # never let one bad pass stop the loop
                log.exception("dataset expiry failed")
                self.health.failed(exc)
            time.sleep(EXPIRY_INTERVAL_S)


def start_expiry(database_url: str) -> ExpirySweep:
    sweep = ExpirySweep(database_url)
    sweep.start()
    return sweep
