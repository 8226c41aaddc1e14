"""REST routes of call statistics (spec §9.2): `/v1/{project_id}/usage/summary|series|failures|export`. The admin key, or an API key of the project."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone
from io import BytesIO
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import Response
from pydantic import Field
from sqlalchemy.orm import Session

from cluster.deps import Admin, ProjectId, database_url
from cluster.runtime.accounting import accounting_actor
from cluster.state.db import Project, session_scope
from cluster.usage import stats
from cluster.usage.audit import audit
from cluster.usage.export import CHARTS, export_xlsx
from cluster.usage.schemas import (AUDIT_RANGE, FailureReport, UsageAudit, UsageFilter, UsageQuery, UsageSeries,
                                   UsageSummary, audit_seconds)
from serve_apps.errors import PlatformError

XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
Params = Annotated[UsageFilter, Query()]
router = APIRouter(prefix="/v1", tags=["usage"])


class ExportParams(UsageFilter):
    # FastAPI reads a query model only when it is a route's one query parameter, hence the subclass.
    metrics: list[str] = Field(default_factory=list, description="charts to export (default all): "
                                                                 + ", ".join(CHARTS))


def _query(session: Session, project_id: str, params: UsageFilter) -> UsageQuery:
    if session.get(Project, project_id) is None:
        raise PlatformError("MaaS.0404", what=f"Project {project_id!r}")
    return UsageQuery(project_id=project_id, **params.model_dump(exclude={"metrics"}))


@router.get("/usage/audit", response_model=UsageAudit)
async def usage_audit(_: Admin, range_: Annotated[str, Query(alias="range", pattern=AUDIT_RANGE)] = "1h",
                      since: Annotated[float | None, Query(description="epoch seconds; instead of range")] = None):
    """The admin's check that billing matches the engines: per model, the ledger's tokens against the tokens
    the engines processed (vLLM's own counters) over the last `range` (30m, 1h, up to 24h), or since `since`."""
    end = time.time()
    start = end - audit_seconds(range_) if since is None else max(since, end - audit_seconds("24h"))
    deltas = await accounting_actor().engine_deltas.remote(start)
    with session_scope(database_url()) as session:
        rows = await asyncio.to_thread(audit, session, start, deltas)
    return UsageAudit(start=datetime.fromtimestamp(start, timezone.utc), end=datetime.fromtimestamp(end, timezone.utc),
                      models=rows)


# Plain `def` routes: FastAPI runs them in its thread pool, so a long scan does not block the event loop.
@router.get("/{project_id}/usage/summary", response_model=UsageSummary)
def usage_summary(project_id: ProjectId, params: Params):
    with session_scope(database_url()) as session:
        return stats.summary(session, _query(session, project_id, params))


@router.get("/{project_id}/usage/series", response_model=UsageSeries)
def usage_series(project_id: ProjectId, params: Params):
    with session_scope(database_url()) as session:
        return stats.series(session, _query(session, project_id, params))


@router.get("/{project_id}/usage/failures", response_model=FailureReport)
def usage_failures(project_id: ProjectId, params: Params):
    with session_scope(database_url()) as session:
        return stats.failures(session, _query(session, project_id, params))


@router.get("/{project_id}/usage/export", response_class=Response,
            responses={200: {"content": {XLSX: {}}, "description": "One sheet per metric chart."}})
def usage_export(project_id: ProjectId, params: Annotated[ExportParams, Query()]):
    buffer = BytesIO()
    with session_scope(database_url()) as session:
        q = _query(session, project_id, params)
        export_xlsx(session, q, buffer, params.metrics)
    start, end = q.window()
    name = f"usage-{project_id}-{start:%Y%m%d%H%M}-{end:%Y%m%d%H%M}.xlsx"
    return Response(buffer.getvalue(), media_type=XLSX,
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})
