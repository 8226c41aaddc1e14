"""A project's resource by id or name, the one lookup every room's rules and routes use; and the lock that
serializes a project's count-then-create checks."""

from __future__ import annotations

from typing import TypeVar

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from cluster.state.db import Project

from serve_apps.errors import PlatformError

Row = TypeVar("Row")


def find_owned(session: Session, table: type[Row], project_id: str, ref: str, *where, name=None) -> Row | None:
    """A project's row of `table` by id or name (`name`: another column than `table.name`), with extra
    conditions; None when there is none."""
    name = table.name if name is None else name
    return session.scalar(select(table).where(table.project_id == project_id, or_(table.id == ref, name == ref),
                                              *where))


def owned(session: Session, table: type[Row], project_id: str, ref: str, what: str, *where, name=None) -> Row:
    """The same, or 404 naming `what`."""
    row = find_owned(session, table, project_id, ref, *where, name=name)
    if row is None:
        raise PlatformError("MaaS.0404", what=f"{what} {ref!r}")
    return row


def lock_project(session: Session, project_id: str) -> None:
    """Hold the project's row until the transaction ends (a write lock on SQLite, a row lock on PostgreSQL),
    so that two creates of the same project cannot both pass a count limit. Call it before counting."""
    session.execute(update(Project).where(Project.id == project_id).values(name=Project.name))
