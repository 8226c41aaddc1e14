"""My models (spec §6.1) as the rest of the platform sees them: lookups by id or name, the versions (at most
10, numbered automatically), what uses them, and the two calls other rooms make: `resolve_version` (a
service's or job's reference -> a deployable card) and `register_version` (how fine-tuning records its
outputs). A service or job stores `model_id = <my-model id>` (`mdl-...`) and `model_version = "<N>"`.
No HTTP here."""

from __future__ import annotations

import re
import shutil
import uuid
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cluster.my_models.schemas import (
    ModelCreate,
    ModelView,
    ResolvedModel,
    VersionCreate,
    VersionView,
    check_name,
)
from cluster.my_models.weights import (base_card, base_path, import_roots, job_outputs_root, model_dir, source_dir,
                                        stage)
from cluster.projects import quotas as project_quotas
from cluster.settings import get_settings
from cluster.state.db import (ACTIVE_JOB_STATES, CompressionJob, ModelVersion, MyModel, Service, TuningJob,
                              session_scope)
from cluster.state.lookup import find_owned, lock_project, owned
from serve_apps.errors import PlatformError

MAX_VERSIONS = 10
_VERSION = re.compile(r"^[vV]?([1-9]\d{0,5})$")


def _check_room(session: Session, model: MyModel) -> list[int]:
    numbers = list(session.scalars(select(ModelVersion.version).where(ModelVersion.model_id == model.id)))
    if len(numbers) >= MAX_VERSIONS:
        raise PlatformError("MaaS.0400", reason=f"The model {model.name!r} already has {MAX_VERSIONS} versions, "
                                                "the most a model can have; delete one to add another.")
    return numbers


def _place(session: Session, model: MyModel, staging: Path, kind: str, source: str,
           description: str, quantization: str | None = None) -> ModelVersion:
    """Number the staged copy (one more than the highest version) and record it."""
    target = None
    try:
        lock_project(session, model.project_id)  # parallel versions are counted one after another
        project_quotas.check_model_disk(session, model.project_id, project_quotas.tree_bytes(staging))
        number = max(_check_room(session, model), default=0) + 1
        target = staging.parent / f"v{number}"
        try:
            staging.rename(target)
        except OSError:
            target = None
            raise PlatformError("MaaS.0409", reason=f"Another version of {model.name!r} is being added; "
                                                    "try again.") from None
        row = ModelVersion(id="mv-" + uuid.uuid4().hex[:12], model_id=model.id, version=number,
                           description=description, path=str(target), kind=kind, source=source, status="created",
                           quantization=quantization)
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


def find_model(session: Session, project_id: str, ref: str) -> MyModel:
    return owned(session, MyModel, project_id, ref, "Model")


def versions(session: Session, model: MyModel) -> list[ModelVersion]:
    return list(session.scalars(select(ModelVersion).where(ModelVersion.model_id == model.id)
                                .order_by(ModelVersion.version)))


def find_version(session: Session, model: MyModel, version: str | int | None) -> ModelVersion:
    """A version by number ("3" or "v3"); None means the highest."""
    rows = versions(session, model)
    if version is None:
        if not rows:
            raise PlatformError("MaaS.0404", what=f"A version of model {model.name!r}")
        return rows[-1]
    match = _VERSION.fullmatch(str(version))
    for row in rows:
        if match and row.version == int(match.group(1)):
            return row
    raise PlatformError("MaaS.0404", what=f"Version {version!r} of model {model.name!r}")


def model_view(session: Session, model: MyModel) -> ModelView:
    return ModelView(id=model.id, project_id=model.project_id, name=model.name, description=model.description,
                     base_model=model.base_model, created_at=model.created_at,
                     versions=[VersionView.of(row) for row in versions(session, model)])


def used_by_services(session: Session, model: MyModel, version: int | None = None) -> list[str]:
    """Services deployed from the model (or one version): `model_id` is the model's id (or its name)."""
    query = select(Service.name, Service.model_version).where(
        Service.project_id == model.project_id, Service.model_id.in_([model.id, model.name]))
    rows = session.execute(query.order_by(Service.name)).all()
    return [f"service {name!r} (version {v})" for name, v in rows
            if version is None or str(v).lstrip("vV") == str(version)]


def used_by_jobs(session: Session, model: MyModel, version: int | None = None) -> list[str]:
    """Fine-tuning and compression jobs still running on the model (or one version) as their input."""
    users = []
    for table, what in ((TuningJob, "tuning job"), (CompressionJob, "compression job")):
        rows = session.execute(select(table.name, table.model_version).where(
            table.project_id == model.project_id, table.model_ref.in_([model.id, model.name]),
            table.status.in_(ACTIVE_JOB_STATES)).order_by(table.name)).all()
        users += [f"{what} {name!r}" for name, v in rows
                  if version is None or v is None or str(v).lstrip("vV") == str(version)]
    return users


def refuse_if_used(session: Session, model: MyModel, version: int | None) -> None:
    users = used_by_services(session, model, version) + used_by_jobs(session, model, version)
    if users:
        what = f"Version {version} of model {model.name!r}" if version else f"The model {model.name!r}"
        raise PlatformError("MaaS.0409", reason=f"{what} cannot be deleted while it is in use by "
                                                f"{', '.join(users)}; delete those first.")


def engine_model_id(name: str, version: int) -> str:
    return f"{name}-v{version}"


def resolve_version(session: Session, project_id: str, model_ref: str, version: str | None = None) -> ResolvedModel:
    """The deployable form of a my-model version (model id or name; version "N", "vN" or None = latest)."""
    model = find_model(session, project_id, model_ref)
    row = find_version(session, model, version)
    base = base_card(model.base_model)
    card = base.model_copy(update={"id": engine_model_id(model.name, row.version), "source": row.path,
                                   "description": model.description or base.description,
                                   "owned_by": project_id})
    return ResolvedModel(card=card, path=Path(row.path), kind=row.kind, base_model=base.id,
                         base_path=base_path(base), model_id=model.id, version=row.version,
                         quantization=row.quantization)


def register_version(session: Session, project_id: str, model_name_or_id: str, path: str | Path, kind: str,
                     source: str, base_model: str | None = None, description: str = "",
                     roots: list[Path] | None = None, quantization: str | None = None) -> VersionView:
    """Record a directory (by default one under the fine-tuning jobs' outputs; else under `roots`) as the next
    version of a model, creating the model (named `model_name_or_id`, on `base_model`) when the project has
    none by that name or id."""
    roots = [job_outputs_root()] if roots is None else roots
    model = find_owned(session, MyModel, project_id, model_name_or_id)
    if model is None:
        if base_model is None:
            raise PlatformError("MaaS.0404", what=f"Model {model_name_or_id!r}")
        try:
            check_name(model_name_or_id)
        except ValueError as exc:
            raise PlatformError("MaaS.0400", reason=str(exc)) from None
        project_quotas.check_model(session, project_id)
        model = MyModel(id="mdl-" + uuid.uuid4().hex[:12], project_id=project_id, name=model_name_or_id,
                        description=description[:100], base_model=base_card(base_model).id)
    elif base_model is not None and base_model != model.base_model:
        raise PlatformError("MaaS.0400", reason=f"The model {model.name!r} is based on {model.base_model!r}, "
                                                f"not {base_model!r}.")
    else:
        _check_room(session, model)
    kind_found, staging = stage(source_dir(path, roots), base_card(model.base_model), model.id, kind)
    session.add(model)
    return VersionView.of(_place(session, model, staging, kind_found, source, description[:100], quantization))


def create_model(project_id: str, spec: ModelCreate) -> ModelView:
    base, source = base_card(spec.base_model), source_dir(spec.path, import_roots())
    with session_scope(get_settings().database_url) as session:
        if session.scalar(select(MyModel.id).where(MyModel.project_id == project_id, MyModel.name == spec.name)):
            raise PlatformError("MaaS.0409", reason=f"A model named {spec.name!r} already exists in this project.")
        project_quotas.check_model(session, project_id)  # before the copy; checked again at the insert
        project_quotas.check_model_disk(session, project_id, project_quotas.tree_bytes(source))
    model = MyModel(id="mdl-" + uuid.uuid4().hex[:12], project_id=project_id, name=spec.name,
                    description=spec.description, base_model=base.id)
    try:
        kind, staging = stage(source, base, model.id, None)  # the create step: check and copy the weights
        with session_scope(get_settings().database_url) as session:
            lock_project(session, project_id)  # parallel creates count one after another
            project_quotas.check_model(session, project_id)
            session.add(model)
            try:
                session.flush()
            except IntegrityError:
                raise PlatformError("MaaS.0409", reason=f"A model named {spec.name!r} already exists in this "
                                                        "project.") from None
            _place(session, model, staging, kind, "upload", "")
            view = model_view(session, model)
    except BaseException:
        shutil.rmtree(model_dir(model.id), ignore_errors=True)
        raise
    return view


def add_version(project_id: str, model_ref: str, spec: VersionCreate) -> VersionView:
    source = source_dir(spec.path, import_roots())
    with session_scope(get_settings().database_url) as session:
        model = find_model(session, project_id, model_ref)
        _check_room(session, model)
        project_quotas.check_model_disk(session, project_id, project_quotas.tree_bytes(source))  # before the copy
    kind, staging = stage(source, base_card(model.base_model), model.id, None)
    view = None
    try:
        with session_scope(get_settings().database_url) as session:
            model = find_model(session, project_id, model.id)
            view = VersionView.of(_place(session, model, staging, kind, "upload", spec.description))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if view is not None:  # numbered and placed, but the commit failed
            shutil.rmtree(view.path, ignore_errors=True)
        raise
    return view
