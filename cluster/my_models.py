"""My models (spec §6.1): a base catalog model plus a Hugging Face-format directory of the project's own
weights (weights, tokenizer, config), kept in up to 10 automatically numbered versions.

A version's weights are copied under `$MAAS_HOME/models/my/<model id>/v<N>`, so the directory a caller
named may go away afterwards. A directory is either a full model (`config.json`, which must describe the
base model's family) or a LoRA adapter (`adapter_config.json`); anything else is refused with
`Modelarts.6206`.

How other modules refer to a version: a service or a job stores `model_id = <my-model id>` (`mdl-...`)
and `model_version = "<N>"`. `resolve_version` turns such a reference (id or name, version or latest) into
a deployable card; `register_version` is how fine-tuning records its outputs.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import delete, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cluster.db import ModelVersion, MyModel, Service, session_scope
from cluster.deps import ProjectId, database_url, reload_accounting
from cluster.settings import get_settings
from serve_apps.catalog import BUILTIN_MODELS, CatalogModel, builtin
from serve_apps.errors import PlatformError

MAX_VERSIONS = 10
KINDS = ("full", "lora")
# Starts with a letter of any script (CJK included); then letters, digits, _, - or .
_NAME = re.compile(r"^[^\W\d_][\w.-]{0,63}$")
_VERSION = re.compile(r"^[vV]?([1-9]\d{0,5})$")
WEIGHT_SUFFIXES = (".safetensors", ".bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt")
router = APIRouter(prefix="/v1/{project_id}/my-models", tags=["my models"])


def check_name(value: str) -> str:
    if not _NAME.match(value):
        raise ValueError("name must be 1-64 characters, start with a letter (CJK included) and contain only "
                         "letters, digits, _, - or .")
    if any(value == model.id for model in BUILTIN_MODELS):
        raise ValueError(f"name {value!r} is a catalog model's id; choose another")
    return value


# -- schemas ---------------------------------------------------------------------------------------
class ModelCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="1-64 characters: starts with a letter (CJK included); letters, digits, _ - .")
    description: str = Field("", max_length=100)
    base_model: str = Field(description="The catalog model the weights derive from.")
    path: str = Field(description="Absolute path of a Hugging Face-format directory on the platform's hosts.")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_name(value)


class VersionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    description: str = Field("", max_length=100)
    path: str = Field(description="Absolute path of a Hugging Face-format directory on the platform's hosts.")


class VersionView(BaseModel):
    id: str
    model_id: str
    version: int = Field(description="Assigned automatically: one more than the highest existing version.")
    description: str
    path: str = Field(description="Where the copied weights live.")
    kind: str = Field(description="full or lora")
    source: str = Field(description="upload, or finetune:<job id>")
    status: str
    created_at: int

    @classmethod
    def of(cls, row: ModelVersion) -> "VersionView":
        return cls(id=row.id, model_id=row.model_id, version=row.version, description=row.description,
                   path=row.path, kind=row.kind, source=row.source, status=row.status, created_at=row.created_at)


class ModelView(BaseModel):
    id: str
    project_id: str
    name: str
    description: str
    base_model: str
    created_at: int
    versions: list[VersionView]


@dataclass(frozen=True)
class ResolvedModel:
    """A my-model version ready to deploy: `card` is the base's card with the engine's model id and
    `source` = the version's directory (for a LoRA adapter, `base_path` holds the base weights)."""

    card: CatalogModel
    path: Path
    kind: str
    base_model: str
    base_path: Path
    model_id: str
    version: int


# -- the weights directory -------------------------------------------------------------------------
def _structure_error() -> PlatformError:
    return PlatformError("Modelarts.6206")


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise _structure_error() from None
    if not isinstance(data, dict):
        raise _structure_error()
    return data


def base_path(base: CatalogModel) -> Path:
    return base.resolve_source(get_settings().models_dir)


def _base_config(base: CatalogModel) -> dict:
    path = base_path(base) / "config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise PlatformError("MaaS.0400", reason=f"The base model {base.id!r} has no readable config.json on "
                                                f"this platform ({path}); build it first.") from None


def _check_config(config: dict, base: CatalogModel) -> None:
    """`model_type` and `architectures` present and equal to the base model's own."""
    model_type, architectures = config.get("model_type"), config.get("architectures")
    if not isinstance(model_type, str) or not model_type or not isinstance(architectures, list) or not architectures:
        raise _structure_error()
    expected = _base_config(base)
    if model_type != expected.get("model_type") or architectures != expected.get("architectures"):
        raise _structure_error()


def check_weights(path: Path, base: CatalogModel, kind: str | None = None) -> str:
    """The kind of a Hugging Face-format directory ("lora" when it has adapter_config.json, else "full"),
    once its description of the model fits the base; `Modelarts.6206` when it does not."""
    kind = kind or ("lora" if (path / "adapter_config.json").is_file() else "full")
    if kind not in KINDS:
        raise PlatformError("MaaS.0400", reason=f"kind must be one of {', '.join(KINDS)}, not {kind!r}.")
    if kind == "lora":
        adapter = _read_json(path / "adapter_config.json")
        rank, targets = adapter.get("r"), adapter.get("target_modules")
        if (not isinstance(adapter.get("peft_type"), str) or not isinstance(rank, int) or isinstance(rank, bool)
                or rank <= 0 or not targets or not isinstance(targets, (str, list))):
            raise _structure_error()
        if (path / "config.json").exists():  # an adapter may carry its base's config: it must be the base's
            _check_config(_read_json(path / "config.json"), base)
    else:
        _check_config(_read_json(path / "config.json"), base)
    files = [p.name for p in path.iterdir() if p.is_file()]
    if not any(name.endswith(WEIGHT_SUFFIXES) for name in files):
        raise PlatformError("MaaS.0400", reason=f"The directory {str(path)!r} has no weight files "
                                                "(*.safetensors or *.bin).")
    if kind == "full" and not any(name in TOKENIZER_FILES for name in files):
        raise PlatformError("MaaS.0400", reason=f"The directory {str(path)!r} has no tokenizer "
                                                f"({', '.join(TOKENIZER_FILES)}).")
    return kind


def _source_dir(path: str | Path) -> Path:
    source = Path(path)
    if not source.is_absolute():
        raise PlatformError("MaaS.0400", reason=f"path must be an absolute path on the platform's hosts, "
                                                f"not {str(path)!r}.")
    if not source.is_dir():
        raise PlatformError("MaaS.0400", reason=f"path {str(path)!r} is not a directory on the platform's hosts "
                                                "(select a folder).")
    return source


def _base(model_id: str) -> CatalogModel:
    try:
        return builtin(model_id)
    except KeyError:
        raise PlatformError("MaaS.0404", what=f"Base model {model_id!r}") from None


def model_dir(model_id: str) -> Path:
    return get_settings().models_dir / "my" / model_id


def _stage(source: Path, base: CatalogModel, model_id: str, kind: str | None) -> tuple[str, Path]:
    """Check, then copy the directory beside the model's versions; `_place` gives it its number."""
    kind = check_weights(source, base, kind)
    staging = model_dir(model_id) / f".staging-{uuid.uuid4().hex[:8]}"
    if staging.resolve().is_relative_to(source.resolve()):
        raise PlatformError("MaaS.0400", reason="path must not contain the platform's own model store.")
    staging.parent.mkdir(parents=True, exist_ok=True)
    try:
        shutil.copytree(source, staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return kind, staging


def _check_room(session: Session, model: MyModel) -> list[int]:
    numbers = list(session.scalars(select(ModelVersion.version).where(ModelVersion.model_id == model.id)))
    if len(numbers) >= MAX_VERSIONS:
        raise PlatformError("MaaS.0400", reason=f"The model {model.name!r} already has {MAX_VERSIONS} versions, "
                                                "the most a model can have; delete one to add another.")
    return numbers


def _place(session: Session, model: MyModel, staging: Path, kind: str, source: str,
           description: str) -> ModelVersion:
    """Number the staged copy (one more than the highest version) and record it."""
    target = None
    try:
        number = max(_check_room(session, model), default=0) + 1
        target = staging.parent / f"v{number}"
        try:
            staging.rename(target)
        except OSError:
            target = None
            raise PlatformError("MaaS.0409", reason=f"Another version of {model.name!r} is being added; "
                                                    "try again.") from None
        row = ModelVersion(id="mv-" + uuid.uuid4().hex[:12], model_id=model.id, version=number,
                           description=description, path=str(target), kind=kind, source=source, status="created")
        session.add(row)
        session.flush()
        return row
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if target is not None:
            shutil.rmtree(target, ignore_errors=True)
        if isinstance(exc, IntegrityError):
            raise PlatformError("MaaS.0409", reason=f"Another version of {model.name!r} is being added; "
                                                    "try again.") from None
        raise


# -- lookups and references ------------------------------------------------------------------------
def _model(session: Session, project_id: str, ref: str) -> MyModel:
    row = session.scalar(select(MyModel).where(MyModel.project_id == project_id,
                                               or_(MyModel.id == ref, MyModel.name == ref)))
    if row is None:
        raise PlatformError("MaaS.0404", what=f"Model {ref!r}")
    return row


def _versions(session: Session, model: MyModel) -> list[ModelVersion]:
    return list(session.scalars(select(ModelVersion).where(ModelVersion.model_id == model.id)
                                .order_by(ModelVersion.version)))


def _version(session: Session, model: MyModel, version: str | int | None) -> ModelVersion:
    """A version by number ("3" or "v3"); None means the highest."""
    rows = _versions(session, model)
    if version is None:
        if not rows:
            raise PlatformError("MaaS.0404", what=f"A version of model {model.name!r}")
        return rows[-1]
    match = _VERSION.match(str(version))
    for row in rows:
        if match and row.version == int(match.group(1)):
            return row
    raise PlatformError("MaaS.0404", what=f"Version {version!r} of model {model.name!r}")


def _view(session: Session, model: MyModel) -> ModelView:
    return ModelView(id=model.id, project_id=model.project_id, name=model.name, description=model.description,
                     base_model=model.base_model, created_at=model.created_at,
                     versions=[VersionView.of(row) for row in _versions(session, model)])


def used_by_services(session: Session, model: MyModel, version: int | None = None) -> list[str]:
    """Services deployed from the model (or one version): `model_id` is the model's id (or its name)."""
    query = select(Service.name, Service.model_version).where(
        Service.project_id == model.project_id, Service.model_id.in_([model.id, model.name]))
    rows = session.execute(query.order_by(Service.name)).all()
    return [f"service {name!r} (version {v})" for name, v in rows
            if version is None or str(v).lstrip("vV") == str(version)]


def used_by_jobs(session: Session, model_id: str, version: int | None = None) -> list[str]:
    """Jobs (fine-tuning, compression) whose input is the model; none exist yet."""
    return []


def _refuse_if_used(session: Session, model: MyModel, version: int | None) -> None:
    users = used_by_services(session, model, version) + used_by_jobs(session, model.id, version)
    if users:
        what = f"Version {version} of model {model.name!r}" if version else f"The model {model.name!r}"
        raise PlatformError("MaaS.0409", reason=f"{what} cannot be deleted while it is in use by "
                                                f"{', '.join(users)}; delete those first.")


# -- what other modules call -----------------------------------------------------------------------
def engine_model_id(name: str, version: int) -> str:
    return f"{name}-v{version}"


def resolve_version(session: Session, project_id: str, model_ref: str, version: str | None = None) -> ResolvedModel:
    """The deployable form of a my-model version (model id or name; version "N", "vN" or None = latest)."""
    model = _model(session, project_id, model_ref)
    row = _version(session, model, version)
    base = _base(model.base_model)
    card = base.model_copy(update={"id": engine_model_id(model.name, row.version), "source": row.path,
                                   "description": model.description or base.description,
                                   "owned_by": project_id})
    return ResolvedModel(card=card, path=Path(row.path), kind=row.kind, base_model=base.id,
                         base_path=base_path(base), model_id=model.id, version=row.version)


def register_version(session: Session, project_id: str, model_name_or_id: str, path: str | Path, kind: str,
                     source: str, base_model: str | None = None, description: str = "") -> VersionView:
    """Record a directory (e.g. a fine-tuning output) as the next version of a model, creating the model
    (named `model_name_or_id`, on `base_model`) when the project has none by that name or id."""
    model = session.scalar(select(MyModel).where(MyModel.project_id == project_id,
                                                 or_(MyModel.id == model_name_or_id,
                                                     MyModel.name == model_name_or_id)))
    if model is None:
        if base_model is None:
            raise PlatformError("MaaS.0404", what=f"Model {model_name_or_id!r}")
        try:
            check_name(model_name_or_id)
        except ValueError as exc:
            raise PlatformError("MaaS.0400", reason=str(exc)) from None
        model = MyModel(id="mdl-" + uuid.uuid4().hex[:12], project_id=project_id, name=model_name_or_id,
                        description=description[:100], base_model=_base(base_model).id)
    elif base_model is not None and base_model != model.base_model:
        raise PlatformError("MaaS.0400", reason=f"The model {model.name!r} is based on {model.base_model!r}, "
                                                f"not {base_model!r}.")
    else:
        _check_room(session, model)
    kind_found, staging = _stage(_source_dir(path), _base(model.base_model), model.id, kind)
    session.add(model)
    return VersionView.of(_place(session, model, staging, kind_found, source, description[:100]))


# -- REST ------------------------------------------------------------------------------------------
def _create(project_id: str, spec: ModelCreate) -> ModelView:
    base, source = _base(spec.base_model), _source_dir(spec.path)
    with session_scope(database_url()) as session:
        if session.scalar(select(MyModel.id).where(MyModel.project_id == project_id, MyModel.name == spec.name)):
            raise PlatformError("MaaS.0409", reason=f"A model named {spec.name!r} already exists in this project.")
    model = MyModel(id="mdl-" + uuid.uuid4().hex[:12], project_id=project_id, name=spec.name,
                    description=spec.description, base_model=base.id)
    try:
        kind, staging = _stage(source, base, model.id, None)  # the create step: check and copy the weights
        with session_scope(database_url()) as session:
            session.add(model)
            try:
                session.flush()
            except IntegrityError:
                raise PlatformError("MaaS.0409", reason=f"A model named {spec.name!r} already exists in this "
                                                        "project.") from None
            _place(session, model, staging, kind, "upload", "")
            view = _view(session, model)
    except BaseException:
        shutil.rmtree(model_dir(model.id), ignore_errors=True)
        raise
    return view


def _add_version(project_id: str, model_ref: str, spec: VersionCreate) -> VersionView:
    source = _source_dir(spec.path)
    with session_scope(database_url()) as session:
        model = _model(session, project_id, model_ref)
        _check_room(session, model)
    kind, staging = _stage(source, _base(model.base_model), model.id, None)
    view = None
    try:
        with session_scope(database_url()) as session:
            model = _model(session, project_id, model.id)
            view = VersionView.of(_place(session, model, staging, kind, "upload", spec.description))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if view is not None:  # numbered and placed, but the commit failed
            shutil.rmtree(view.path, ignore_errors=True)
        raise
    return view


def _confirm(confirm: str, what: str) -> None:
    if confirm != "DELETE":
        raise PlatformError("MaaS.0400", reason=f"Deleting {what} needs the confirmation text DELETE.")


@router.post("", status_code=201, response_model=ModelView)
async def create_model(project_id: ProjectId, spec: ModelCreate):
    """Create a model and its version 1 from a base catalog model and a directory of weights (copied)."""
    view = await asyncio.to_thread(_create, project_id, spec)
    await reload_accounting()  # a LoRA version is callable at once
    return view


@router.get("", response_model=list[ModelView])
async def list_models(project_id: ProjectId):
    with session_scope(database_url()) as session:
        rows = session.scalars(select(MyModel).where(MyModel.project_id == project_id).order_by(MyModel.created_at))
        return [_view(session, row) for row in rows]


@router.get("/{model}", response_model=ModelView)
async def get_model(project_id: ProjectId, model: str):
    with session_scope(database_url()) as session:
        return _view(session, _model(session, project_id, model))


@router.post("/{model}/versions", status_code=201, response_model=VersionView)
async def add_version(project_id: ProjectId, model: str, spec: VersionCreate):
    """The next version (numbered automatically; at most 10 per model)."""
    view = await asyncio.to_thread(_add_version, project_id, model, spec)
    await reload_accounting()
    return view


@router.get("/{model}/versions", response_model=list[VersionView])
async def list_versions(project_id: ProjectId, model: str):
    with session_scope(database_url()) as session:
        return [VersionView.of(row) for row in _versions(session, _model(session, project_id, model))]


@router.get("/{model}/versions/{version}", response_model=VersionView)
async def get_version(project_id: ProjectId, model: str, version: str):
    with session_scope(database_url()) as session:
        return VersionView.of(_version(session, _model(session, project_id, model), version))


@router.delete("/{model}", status_code=204)
async def delete_model(project_id: ProjectId, model: str, confirm: str = ""):
    """Only when no version is used by a service or a job. Needs confirm=DELETE."""
    _confirm(confirm, "a model")
    with session_scope(database_url()) as session:
        row = _model(session, project_id, model)
        _refuse_if_used(session, row, None)
        session.execute(delete(ModelVersion).where(ModelVersion.model_id == row.id))
        session.delete(row)
    await reload_accounting()  # its names stop being callable before the files go
    await asyncio.to_thread(shutil.rmtree, model_dir(row.id), True)


@router.delete("/{model}/versions/{version}", status_code=204)
async def delete_version(project_id: ProjectId, model: str, version: str, confirm: str = ""):
    """Only when no service or job uses it, and not the model's only version. Needs confirm=DELETE."""
    _confirm(confirm, "a model version")
    with session_scope(database_url()) as session:
        parent = _model(session, project_id, model)
        row = _version(session, parent, version)
        _refuse_if_used(session, parent, row.version)
        if len(_versions(session, parent)) == 1:
            raise PlatformError("MaaS.0409", reason=f"Version {row.version} is the only version of model "
                                                    f"{parent.name!r}; delete the model instead.")
        session.delete(row)
    await reload_accounting()
    await asyncio.to_thread(shutil.rmtree, row.path, True)
