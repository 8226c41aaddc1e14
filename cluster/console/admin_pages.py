"""The admin's preset page (spec §4.2-4.3): the offer of each platform model (free until an expiry time, free up
to a claimable token quota, or commercial; its model-level RPM and TPM), and freezing or unfreezing a project's
use of one preset or of every preset (arrears: its calls answer ModelArts.81006 "The resource is frozen.").
Every action is the presets room's route function (cluster.presets.router), which reloads the accounting
actor as the REST API does."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from pydantic import ValidationError

from cluster.console.pages import admin_only, go, page, posted, reason, status_of
from cluster.console.session import Viewer
from cluster.presets import router as presets_router
from cluster.presets.schemas import FreezeSpec, PresetSpec
from cluster.projects import router as projects_router
from serve_apps.errors import PlatformError

router = APIRouter()
EVERY_PRESET = "*"


def utc_input(epoch: int | None) -> str:
    """An epoch as the value of a datetime-local input, in UTC."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M") if epoch else ""


def epoch_of(value: str) -> int | None:
    if not value.strip():
        return None
    try:
        return int(datetime.fromisoformat(value.strip()).replace(tzinfo=UTC).timestamp())
    except ValueError:
        raise PlatformError("MaaS.0400", reason=f"expires_at: {value!r} is not a date and time "
                                                "(YYYY-MM-DDTHH:MM, UTC).") from None


async def _presets_page(request: Request, viewer: Viewer, status: int = 200, **context):
    presets = await presets_router.list_presets(None)
    projects = await projects_router.list_projects(None)
    standing = {p.id: {s.model_id: s for s in await presets_router.project_presets(p.id)} for p in projects}
    return await page(request, "admin_presets.html", viewer, None, status, presets=presets, project_rows=projects,
                      standing=standing, utc_input=utc_input, every=EVERY_PRESET, **context)


@router.get("/admin/presets", response_class=HTMLResponse)
async def presets_page(request: Request, notice: str = ""):
    viewer = admin_only(request)
    return await _presets_page(request, viewer, notice=notice)


@router.post("/admin/presets/freeze", response_class=HTMLResponse)
async def freeze(request: Request):
    """Freeze or unfreeze a project's use of one preset, or of every preset at once."""
    viewer = admin_only(request)
    form = await posted(request, viewer)
    project, model, frozen = form.get("project_id", ""), form.get("model_id", ""), form.get("frozen") == "1"
    try:
        models = [p.model_id for p in await presets_router.list_presets(None)] if model == EVERY_PRESET else [model]
        for model_id in models:
            await presets_router.freeze(model_id, FreezeSpec(project_id=project, frozen=frozen), None)
    except (PlatformError, ValidationError) as exc:
        return await _presets_page(request, viewer, status_of(exc), error=reason(exc))
    what = "every preset" if model == EVERY_PRESET else model
    return go(request, "/admin/presets", f"Project {project}: {what} {'frozen' if frozen else 'unfrozen'}.")


@router.post("/admin/presets/{model_id}", response_class=HTMLResponse)
async def set_preset(request: Request, model_id: str):
    viewer = admin_only(request)
    form = await posted(request, viewer)
    try:
        kind = form.get("kind", "")
        free = kind == "free"
        limits = {f: form.get(f) for f in ("rpm", "tpm") if form.get(f)}  # empty: the platform's default
        spec = PresetSpec(kind=kind, expires_at=epoch_of(str(form.get("expires_at", ""))) if free else None,
                          free_quota_tokens=(form.get("free_quota_tokens") or None) if free else None, **limits)
        await presets_router.set_preset(model_id, spec, None)
    except (PlatformError, ValidationError) as exc:
        return await _presets_page(request, viewer, status_of(exc), error=reason(exc))
    return go(request, "/admin/presets", f"The offer of {model_id} is saved.")
