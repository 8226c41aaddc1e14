"""Per-project quotas: the platform's defaults (MAAS_QUOTA_*) with an admin's overrides. The rooms that
create compute or storage ask here before they create (under the project's lock, so parallel creates cannot
both pass a count). No HTTP here."""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from cluster.projects.schemas import QUOTA_FIELDS, QuotaSpec, QuotaView
from cluster.settings import get_settings
from cluster.state.db import ACTIVE_JOB_STATES, CompressionJob, ModelVersion, MyModel, Project, Service, TuningJob
from serve_apps.errors import PlatformError


def quotas(session: Session, project_id: str) -> QuotaView:
    settings = get_settings()
    row = session.get(Project, project_id)
    overrides = {k: v for k, v in ((row.quotas or {}) if row else {}).items() if k in QUOTA_FIELDS and v}
    values = {name: overrides.get(name, getattr(settings, f"quota_{name}")) for name in QUOTA_FIELDS}
    return QuotaView(project_id=project_id, overrides=sorted(overrides), **values)


def set_quotas(session: Session, project_id: str, spec: QuotaSpec) -> QuotaView:
    row = session.get(Project, project_id)
    if row is None:
        raise PlatformError("MaaS.0404", what=f"Project {project_id!r}")
    row.quotas = {k: v for k, v in spec.model_dump().items() if v is not None}
    session.flush()
    return quotas(session, project_id)


def _over(what: str, limit: int) -> PlatformError:
    return PlatformError("MaaS.0400", reason=f"Over the project's quota: at most {limit} {what}. An admin can "
                                             "raise it (maas projects quotas).")


def check_service(session: Session, project_id: str, instances: int, replacing: Service | None = None) -> None:
    """A new service with `instances` (or `replacing` scaled to them) fits the services and instances quotas.
    Instances count over the project's services that should run; an autoscaled one counts its maximum."""
    limit = quotas(session, project_id)
    others = [Service.project_id == project_id, Service.desired == "running"]
    if replacing is not None:
        others.append(Service.id != replacing.id)
    else:
        count = session.scalar(select(func.count()).select_from(Service).where(Service.project_id == project_id))
        if count >= limit.services:
            raise _over("model services", limit.services)
    peak = case((Service.autoscale != "off", func.coalesce(Service.max_instances, Service.instances)),
                else_=Service.instances)
    used = session.scalar(select(func.coalesce(func.sum(peak), 0)).where(*others))
    if used + instances > limit.instances:
        raise _over(f"engine instances over running services ({used} in use)", limit.instances)


def check_model(session: Session, project_id: str) -> None:
    limit = quotas(session, project_id)
    count = session.scalar(select(func.count()).select_from(MyModel).where(MyModel.project_id == project_id))
    if count >= limit.models:
        raise _over("models", limit.models)


def check_job(session: Session, project_id: str, workers: int = 1, batch_size: int = 1, seq_len: int = 1) -> None:
    """A job's sizes fit the project's quotas (a compression job has a sequence length only)."""
    limit = quotas(session, project_id)
    for value, name, what in ((workers, "workers", "Ray Train workers per job"),
                              (batch_size, "batch_size", "samples in a job's global batch"),
                              (seq_len, "seq_len", "tokens of a job's sequence length")):
        if value > getattr(limit, name):
            raise _over(what, getattr(limit, name))


def check_active_jobs(session: Session, project_id: str) -> None:
    """One more job fits the active jobs quota, tuning and compression together (a continue counts as one more).
    Call it under the project's lock (`lock_project`) so that parallel creates are counted one after another."""
    limit = quotas(session, project_id).jobs
    active = sum(session.scalar(select(func.count()).select_from(table).where(
        table.project_id == project_id, table.status.in_(ACTIVE_JOB_STATES)))
        for table in (TuningJob, CompressionJob))
    if active >= limit:
        raise _over(f"active jobs, tuning and compression together ({active} active; stop one or wait for it to "
                    "end)", limit)


def tree_bytes(path: str | Path) -> int:
    """The bytes of the files under `path` (links not followed; a missing path is 0)."""
    total = 0
    for folder, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:
                pass
    return total


def check_model_disk(session: Session, project_id: str, adding: int) -> None:
    """`adding` more bytes of weights fit the project's storage quota (every version of its models counts).
    Call it under the project's lock (`lock_project`) so that parallel imports are counted one after another."""
    limit = quotas(session, project_id).model_disk_mb
    paths = session.scalars(select(ModelVersion.path).join(MyModel, ModelVersion.model_id == MyModel.id)
                            .where(MyModel.project_id == project_id))
    used = sum(tree_bytes(path) for path in paths)
    if used + adding > limit * 2**20:
        raise PlatformError("MaaS.0400", reason=(
            f"Over the project's storage quota: at most {limit} MiB of model weights over all versions of its "
            f"models ({used / 2**20:.1f} MiB in use, this version {adding / 2**20:.1f} MiB). Delete a version, "
            "or an admin can raise it (maas projects quotas --model-disk-mb)."))
    check_storage(session, project_id, adding)


def storage_used(session: Session, project_id: str) -> int:
    """The bytes a project keeps: its dataset uploads, its jobs' outputs (checkpoints, compressed models) and
    every version of its models."""
    settings = get_settings()
    folders = [settings.datasets_dir(project_id), settings.finetune_dir() / project_id,
               settings.compression_dir(project_id)]
    versions = session.scalars(select(ModelVersion.path).join(MyModel, ModelVersion.model_id == MyModel.id)
                               .where(MyModel.project_id == project_id))
    return sum(tree_bytes(path) for path in [*folders, *versions])


def check_storage(session: Session, project_id: str, adding: int) -> None:
    """`adding` more bytes fit the project's storage quota (a job passes 1: it needs room left to write).
    Call it under the project's lock (`lock_project`) so that parallel writers are counted one after another."""
    limit = quotas(session, project_id).storage_mb
    used = storage_used(session, project_id)
    if used + adding > limit * 2**20:
        raise PlatformError("MaaS.0400", reason=(
            f"Over the project's storage quota: at most {limit} MiB over dataset uploads, job outputs and model "
            f"versions ({used / 2**20:.1f} MiB in use, {adding / 2**20:.1f} MiB more asked). Delete datasets, "
            "jobs or model versions, or an admin can raise it (maas projects quotas --storage-mb)."))


def check_datasets(session: Session, project_id: str, kept: int) -> None:
    """One more upload fits the project's count of kept dataset uploads (`kept` of them now)."""
    limit = quotas(session, project_id).datasets
    if kept >= limit:
        raise _over("dataset uploads (delete some: DELETE /datasets/{id})", limit)
