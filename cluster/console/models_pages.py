"""My models in the console (spec §6.1): the models and their versions (kind, source, compression), import of
a Hugging Face-format folder under one of the admin's import roots (MAAS_IMPORT_ROOTS: the my_models room's
only way in, checked and copied by its registry), a new version, and delete of a version or a model after
typing DELETE (refused while a service or a job uses it). Every action is the REST route's function."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from pydantic import ValidationError

from cluster.console.pages import Refused, access, go, page, posted, reason, status_of
from cluster.console.session import Viewer
from cluster.my_models import router as my_models_router
from cluster.my_models.schemas import ModelCreate, VersionCreate
from cluster.my_models.weights import import_roots
from cluster.schemas import confirmation
from serve_apps.catalog import BUILTIN_MODELS
from serve_apps.errors import PlatformError

router = APIRouter()


async def _models_page(request: Request, viewer: Viewer, project: str, status: int = 200, **context):
    models = await my_models_router.list_models(project)
    # The folders weights may come from are the operator's configuration: shown to the admin only.
    roots = [str(r) for r in import_roots()] if viewer.admin else []
    return await page(request, "my_models.html", viewer, project, status, models=models, bases=BUILTIN_MODELS,
                      roots=roots, any_root=bool(import_roots()), **context)


@router.get("/p/{project}/my-models", response_class=HTMLResponse)
async def my_models_page(request: Request, project: str, notice: str = ""):
    viewer = access(request, project)
    return await _models_page(request, viewer, project, notice=notice)


@router.post("/p/{project}/my-models", response_class=HTMLResponse)
async def import_model(request: Request, project: str):
    viewer = access(request, project)
    form = await posted(request, viewer)
    try:
        spec = ModelCreate(name=form.get("name", ""), description=form.get("description", ""),
                           base_model=form.get("base_model", ""), path=str(form.get("path", "")).strip())
        created = await my_models_router.create_model(project, spec)
    except (PlatformError, ValidationError) as exc:
        return await _models_page(request, viewer, project, status_of(exc), error=reason(exc), form=dict(form))
    return go(request, f"/p/{project}/my-models", f"Model {created.name} imported: version 1.")


@router.post("/p/{project}/my-models/{model}/{action}", response_class=HTMLResponse)
async def model_action(request: Request, project: str, model: str, action: str):
    viewer = access(request, project)
    form = await posted(request, viewer)
    try:
        if action == "versions":
            added = await my_models_router.add_version(project, model, VersionCreate(
                description=form.get("description", ""), path=str(form.get("path", "")).strip()))
            notice = f"Version {added.version} added."
        elif action == "delete-version":
            confirmation("DELETE", "Deleting a model version")(form.get("confirm", ""))
            version = str(form.get("version", ""))
            await my_models_router.delete_version(project, model, version, None)
            notice = f"Version {version} deleted."
        elif action == "delete":
            confirmation("DELETE", "Deleting a model")(form.get("confirm", ""))
            await my_models_router.delete_model(project, model, None)
            notice = "Model deleted."
        else:
            raise Refused(404, "There is no such page.")
    except (PlatformError, ValidationError) as exc:
        return await _models_page(request, viewer, project, status_of(exc), error=reason(exc))
    return go(request, f"/p/{project}/my-models", notice)
