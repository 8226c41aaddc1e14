"""SQL state: the tables (SQLAlchemy 2 mapped classes), the engine, and migrations to head (Alembic)."""

from __future__ import annotations

import time
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Iterator

from sqlalchemy import JSON, ForeignKey, String, UniqueConstraint, create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

DEFAULT_PROJECT = "default"


def now() -> int:
    return int(time.time())


class Base(DeclarativeBase):
    pass


class Project(Base):
    __tablename__ = "projects"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
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
