"""SQL state: the tables (SQLAlchemy 2 mapped classes), the engine, and migrations to head (Alembic)."""

from __future__ import annotations

import time
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Iterator

from sqlalchemy import (JSON, BigInteger, Boolean, Float, ForeignKey, Index, Integer, String, UniqueConstraint,
                        create_engine, event)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

DEFAULT_PROJECT = "default"

# 64-bit columns for row ids that grow with traffic and for limits/quotas a user sets. PostgreSQL's INTEGER is
# 32-bit (a usage_records id would overflow after 2**31 calls); SQLite's INTEGER is already 64-bit, and only
# "INTEGER PRIMARY KEY" is its auto-incrementing rowid, so SQLite keeps INTEGER.
BigInt = BigInteger().with_variant(Integer(), "sqlite")
MAX_BIGINT = 2**63 - 1  # the largest limit or quota an API accepts


def now() -> int:
    return int(time.time())


class Base(DeclarativeBase):
    pass


class Project(Base):
    __tablename__ = "projects"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    quotas: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # an admin's overrides of the defaults
    created_at: Mapped[int] = mapped_column(default=now)


class ApiKey(Base):
    """A caller's key. Only the SHA-256 of the secret is stored, plus 4+4 characters for display."""

    __tablename__ = "api_keys"
    __table_args__ = (UniqueConstraint("project_id", "label"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), index=True)
    label: Mapped[str] = mapped_column(String(100))
    description: Mapped[str] = mapped_column(String(100))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(4))
    suffix: Mapped[str] = mapped_column(String(4))
    created_at: Mapped[int] = mapped_column(default=now)


class AdminKey(Base):
    __tablename__ = "admin_keys"
    id: Mapped[int] = mapped_column(primary_key=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[int] = mapped_column(default=now)


class ServedModel(Base):
    """A model name callers can use and the Serve application that answers it.

    `project_id` NULL means every project may call it (the built-in models)."""

    __tablename__ = "served_models"
    model_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    project_id: Mapped[str | None] = mapped_column(ForeignKey("projects.id"), nullable=True)
    app_name: Mapped[str] = mapped_column(String(128))
    deployment_name: Mapped[str] = mapped_column(String(128))
    card: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[int] = mapped_column(default=now)


class Service(Base):
    """A model service ("my service"): the desired state the reconciler makes Ray Serve match."""

    __tablename__ = "services"
    __table_args__ = (UniqueConstraint("project_id", "name"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    description: Mapped[str] = mapped_column(String(256), default="")
    model_id: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(32), default="1")
    previous_version: Mapped[str | None] = mapped_column(String(32), nullable=True)  # before the last upgrade
    instances: Mapped[int] = mapped_column(default=1)  # the fixed count when autoscale is off
    autoscale: Mapped[str] = mapped_column(String(16), default="off", server_default="off")  # llm | requests | off
    min_instances: Mapped[int | None] = mapped_column(nullable=True)  # bounds when autoscale is on
    max_instances: Mapped[int | None] = mapped_column(nullable=True)
    autoscale_options: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # LLMPolicyOptions overrides
    max_batch: Mapped[int | None] = mapped_column(nullable=True)  # requests one engine runs at once
    node_type: Mapped[str | None] = mapped_column(String(64), nullable=True)  # the custom Ray resource engines need
    last_scaling: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # the last autoscaling decision
    qps: Mapped[int | None] = mapped_column(nullable=True)
    moderation: Mapped[bool] = mapped_column(Boolean, default=True)
    auto_stop_s: Mapped[int | None] = mapped_column(nullable=True)
    notify_url: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    notify_events: Mapped[list] = mapped_column(JSON, default=list)
    desired: Mapped[str] = mapped_column(String(16), default="running")  # running | stopped
    status: Mapped[str] = mapped_column(String(16), default="Pending")  # one of the 18 API values (spec 4.6.1)
    status_reason: Mapped[str] = mapped_column(String(1024), default="")
    generation: Mapped[int] = mapped_column(default=1)  # bumped by changes that need a new Serve application
    app_name: Mapped[str] = mapped_column(String(128), default="")  # the Serve application now answering
    running_since: Mapped[int | None] = mapped_column(nullable=True)
    run_seconds: Mapped[int] = mapped_column(default=0)  # Running time before running_since (auto-stop)
    created_at: Mapped[int] = mapped_column(default=now)
    updated_at: Mapped[int] = mapped_column(default=now)


class ServiceEvent(Base):
    """A status change of a service; kept 30 days."""

    __tablename__ = "service_events"
    id: Mapped[int] = mapped_column(BigInt, primary_key=True, autoincrement=True)
    service_id: Mapped[str] = mapped_column(String(32), index=True)
    project_id: Mapped[str] = mapped_column(String(64))
    at: Mapped[int] = mapped_column(default=now, index=True)
    status: Mapped[str] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(String(1024), default="")
    notified: Mapped[bool] = mapped_column(Boolean, default=False)


class JobEvent(Base):
    """A status change of a tuning or compression job (or a trouble the job-sync loop had with it), and the
    outcome of its webhook; kept 30 days."""

    __tablename__ = "job_events"
    id: Mapped[int] = mapped_column(BigInt, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(32), index=True)  # ft-... or cp-...
    project_id: Mapped[str] = mapped_column(String(64))
    at: Mapped[int] = mapped_column(default=now, index=True)
    status: Mapped[str] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(String(1024), default="")
    notified: Mapped[bool] = mapped_column(Boolean, default=False)


class Endpoint(Base):
    """A custom endpoint: its own name, RPM and TPM in front of one service. Deleted rows stay (names are
    never reused)."""

    __tablename__ = "endpoints"
    __table_args__ = (UniqueConstraint("project_id", "name"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    description: Mapped[str] = mapped_column(String(256), default="")
    target: Mapped[str] = mapped_column(String(128))  # a preset model id or a service id
    rpm: Mapped[int] = mapped_column(BigInt)
    tpm: Mapped[int] = mapped_column(BigInt)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    deleted_at: Mapped[int | None] = mapped_column(nullable=True)
    created_at: Mapped[int] = mapped_column(default=now)
    updated_at: Mapped[int] = mapped_column(default=now)


class Preset(Base):
    """How a platform-served model is offered: free (expiry or claimable token quota) or commercial."""

    __tablename__ = "presets"
    model_id: Mapped[str] = mapped_column(ForeignKey("served_models.model_id"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), default="free")  # free | commercial
    expires_at: Mapped[int | None] = mapped_column(nullable=True)  # free mode 1
    free_quota_tokens: Mapped[int | None] = mapped_column(BigInt, nullable=True)  # free mode 2 (claim first)
    rpm: Mapped[int] = mapped_column(BigInt, default=600)  # model-level limits, per project
    tpm: Mapped[int] = mapped_column(BigInt, default=1_000_000)


class PresetGrant(Base):
    """A project's activation (commercial) or claim (free quota) of a preset, and whether it is frozen. An
    admin may freeze a project that never activated or claimed: its row then has `granted` false."""

    __tablename__ = "preset_grants"
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), primary_key=True)
    model_id: Mapped[str] = mapped_column(ForeignKey("presets.model_id"), primary_key=True)
    frozen: Mapped[bool] = mapped_column(Boolean, default=False)
    granted: Mapped[bool] = mapped_column(Boolean, default=True)
    # when it was activated or claimed, epoch seconds with their fraction: the free quota counts the calls
    # that started after it (usage_records.ts), to the millisecond
    created_at: Mapped[float] = mapped_column(Float, default=time.time)


class UsageRecord(Base):
    """One answered (or refused) call of a known caller. `request_id` makes re-sent records idempotent."""

    __tablename__ = "usage_records"
    __table_args__ = (Index("ix_usage_project_ts", "project_id", "ts"),)
    id: Mapped[int] = mapped_column(BigInt, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(64), unique=True)
    ts: Mapped[float] = mapped_column(Float)  # request start, epoch seconds
    project_id: Mapped[str] = mapped_column(String(64))
    key_id: Mapped[str] = mapped_column(String(32), default="")
    service_type: Mapped[str] = mapped_column(String(16), default="")  # service | commercial | free | endpoint
    service_id: Mapped[str] = mapped_column(String(128), default="")  # service id, preset model id
    endpoint_id: Mapped[str] = mapped_column(String(32), default="")
    model: Mapped[str] = mapped_column(String(128), default="")  # the name the caller used
    prompt_tokens: Mapped[int] = mapped_column(default=0)
    completion_tokens: Mapped[int] = mapped_column(default=0)
    status_code: Mapped[int] = mapped_column(default=200)
    error_code: Mapped[str] = mapped_column(String(64), default="")
    latency_ms: Mapped[float] = mapped_column(Float, default=0.0)
    ttft_ms: Mapped[float | None] = mapped_column(Float, nullable=True)  # streams only
    tpot_ms: Mapped[float | None] = mapped_column(Float, nullable=True)  # streams only
    client_ip: Mapped[str] = mapped_column(String(64), default="")
    stream: Mapped[bool] = mapped_column(Boolean, default=False)
    playground: Mapped[bool] = mapped_column(Boolean, default=False)  # console playground: not in statistics
    # How long the call waited for an engine replica to take it (a cold start from zero instances, or every
    # instance busy); None for calls that never reached an engine.
    replica_wait_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    # How many calls the row stands for: 1, or a minute's repeated refusals of one key folded into one row.
    calls: Mapped[int] = mapped_column(default=1, server_default="1")


@lru_cache(maxsize=4)
def get_engine(url: str) -> Engine:
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(conn, _record):  # WAL: the control plane and the actor share the file
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA foreign_keys=ON")

        return engine
    return create_engine(url, pool_pre_ping=True)


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    session = sessionmaker(get_engine(url), expire_on_commit=False)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def migrate(url: str) -> None:
    """Bring the schema to head and make sure the default project exists."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    command.upgrade(config, "head")
    with session_scope(url) as session:
        if session.get(Project, DEFAULT_PROJECT) is None:
            session.add(Project(id=DEFAULT_PROJECT, name=DEFAULT_PROJECT))


class EngineCounterSample(Base):
    """An engine replica's cumulative token counters (vLLM's prompt/generation token totals) at one moment:
    `maas usage audit` takes each replica's difference over a range (serve_apps.witness pushes them)."""

    __tablename__ = "engine_counter_samples"
    __table_args__ = (Index("ix_engine_samples_at", "at"),)
    id: Mapped[int] = mapped_column(BigInt, primary_key=True, autoincrement=True)
    replica: Mapped[str] = mapped_column(String(128))
    app_name: Mapped[str] = mapped_column(String(128))
    at: Mapped[float] = mapped_column(Float)
    prompt_tokens: Mapped[int] = mapped_column(BigInt)
    generation_tokens: Mapped[int] = mapped_column(BigInt)


class MyModel(Base):
    """A model of the project's own ("my model", spec §6.1): a base catalog model plus custom weights."""

    __tablename__ = "my_models"
    __table_args__ = (UniqueConstraint("project_id", "name"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # mdl-<12 hex>
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    description: Mapped[str] = mapped_column(String(100), default="")
    base_model: Mapped[str] = mapped_column(String(128))  # a catalog model id
    created_at: Mapped[int] = mapped_column(default=now)


class ModelVersion(Base):
    """One version of a my-model: weights copied under $MAAS_HOME/models/my/<model id>/v<N>."""

    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("model_id", "version"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # mv-<12 hex>
    model_id: Mapped[str] = mapped_column(ForeignKey("my_models.id"), index=True)
    version: Mapped[int] = mapped_column()
    description: Mapped[str] = mapped_column(String(100), default="")
    path: Mapped[str] = mapped_column(String(1024))
    kind: Mapped[str] = mapped_column(String(16), default="full")  # full | lora
    source: Mapped[str] = mapped_column(String(128), default="upload")  # upload | finetune:<id> | compress:<id>
    quantization: Mapped[str | None] = mapped_column(String(32), nullable=True)  # the compression strategy
    status: Mapped[str] = mapped_column(String(16), default="created")
    created_at: Mapped[int] = mapped_column(default=now)


# Job statuses in which a job (tuning or compression) still has, or may get, a Ray Job running.
ACTIVE_JOB_STATES = ("creating", "pending", "starting", "running", "alarm", "stopping")


class TuningJob(Base):
    """A fine-tuning job (spec §7): its parameters, the Ray Job running it, and where its outputs go."""

    __tablename__ = "tuning_jobs"
    __table_args__ = (UniqueConstraint("project_id", "name"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # ft-<12 hex>
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    description: Mapped[str] = mapped_column(String(1000), default="")
    job_type: Mapped[str] = mapped_column(String(16))  # full | lora | pretrain
    model_ref: Mapped[str] = mapped_column(String(128))  # a catalog model, or a my-model id or name
    model_version: Mapped[str | None] = mapped_column(String(16), nullable=True)
    base_model: Mapped[str] = mapped_column(String(128))  # the catalog family
    dataset_path: Mapped[str] = mapped_column(String(1024))
    dataset_format: Mapped[str] = mapped_column(String(16))
    params: Mapped[dict] = mapped_column(JSON, default=dict)  # the FinetuneConfig fields the user chose
    output_model: Mapped[str] = mapped_column(String(64))
    output_dir: Mapped[str] = mapped_column(String(1024))
    status: Mapped[str] = mapped_column(String(16), default="creating")
    status_reason: Mapped[str] = mapped_column(String(4000), default="")
    submission_id: Mapped[str] = mapped_column(String(64), default="")  # the current Ray Job
    runs: Mapped[int] = mapped_column(default=0)  # Ray Jobs started (1 + continues)
    data_count: Mapped[int] = mapped_column(default=0)
    iterations: Mapped[int] = mapped_column(default=0)
    result_version: Mapped[str] = mapped_column(String(32), default="")  # the model version registered
    auto_stop_s: Mapped[int | None] = mapped_column(nullable=True)  # stop after this much running time
    running_since: Mapped[int | None] = mapped_column(nullable=True)  # set while the job is running
    run_seconds: Mapped[int] = mapped_column(default=0, server_default="0")  # running time of earlier stretches
    notify_url: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    notify_events: Mapped[list | None] = mapped_column(JSON, nullable=True)  # job statuses that are POSTed
    created_at: Mapped[int] = mapped_column(default=now)
    updated_at: Mapped[int] = mapped_column(default=now)


class CompressionJob(Base):
    """A compression job (spec §6.2): a model (catalog or a full version of mine) quantized by one strategy
    into the next version of an output model; run as a Ray Job like a tuning job (`runtime.jobs`)."""

    __tablename__ = "compression_jobs"
    __table_args__ = (UniqueConstraint("project_id", "name"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # cp-<12 hex>
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    description: Mapped[str] = mapped_column(String(1000), default="")
    strategy: Mapped[str] = mapped_column(String(32))  # smoothquant-w8a8 | awq-w4a16 | gptq-w4a16
    model_ref: Mapped[str] = mapped_column(String(128))  # a catalog model, or a my-model id or name
    model_version: Mapped[str | None] = mapped_column(String(16), nullable=True)
    base_model: Mapped[str] = mapped_column(String(128))  # the catalog family
    source_path: Mapped[str] = mapped_column(String(1024))  # the weights compressed
    dataset_path: Mapped[str | None] = mapped_column(String(1024), nullable=True)  # None: built-in calibration
    dataset_format: Mapped[str | None] = mapped_column(String(16), nullable=True)
    params: Mapped[dict] = mapped_column(JSON, default=dict)  # the CompressConfig fields the user chose
    output_model: Mapped[str] = mapped_column(String(64))
    output_dir: Mapped[str] = mapped_column(String(1024))
    status: Mapped[str] = mapped_column(String(16), default="creating")
    status_reason: Mapped[str] = mapped_column(String(4000), default="")
    submission_id: Mapped[str] = mapped_column(String(64), default="")
    runs: Mapped[int] = mapped_column(default=0)
    result_version: Mapped[str] = mapped_column(String(32), default="")
    auto_stop_s: Mapped[int | None] = mapped_column(nullable=True)
    running_since: Mapped[int | None] = mapped_column(nullable=True)
    run_seconds: Mapped[int] = mapped_column(default=0, server_default="0")
    notify_url: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    notify_events: Mapped[list | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[int] = mapped_column(default=now)
    updated_at: Mapped[int] = mapped_column(default=now)
