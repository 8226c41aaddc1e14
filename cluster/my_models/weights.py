"""A my-model version's weights directory: is it a full model (`config.json` describing the base model's
family) or a LoRA adapter (`adapter_config.json`), and its copy into the platform's store
(`$MAAS_HOME/models/my/<model id>/`). Anything else is refused with `Modelarts.6206`. No SQL, no HTTP."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

from cluster.my_models.schemas import KINDS
from cluster.settings import get_settings
from serve_apps.catalog import CatalogModel, builtin
from serve_apps.errors import PlatformError

WEIGHT_SUFFIXES = (".safetensors", ".bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt")


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


def import_roots() -> list[Path]:
    """Where a caller may import weights from: the directories an admin configured (MAAS_IMPORT_ROOTS)."""
    return get_settings().import_root_dirs


def job_outputs_root() -> Path:
    """Where fine-tuning jobs write the models that become versions (the platform's own files)."""
    return get_settings().finetune_dir()


def source_dir(path: str | Path, roots: list[Path]) -> Path:
    """The directory to import, if it lies under one of `roots` and no link inside it leaves it."""
    source = Path(path)
    if not source.is_absolute():
        raise PlatformError("MaaS.0400", reason=f"path must be an absolute path on the platform's hosts, "
                                                f"not {str(path)!r}.")
    resolved = source.resolve()
    if not any(resolved.is_relative_to(root) for root in roots):
        raise PlatformError("MaaS.0403", reason=(
            "path must lie under an import root the admin configured (MAAS_IMPORT_ROOTS); this one does not."))
    if not resolved.is_dir():
        raise PlatformError("MaaS.0400", reason=f"path {str(path)!r} is not a directory on the platform's hosts "
                                                "(select a folder).")
    _refuse_links_out(resolved)
    return resolved


def _refuse_links_out(source: Path) -> None:
    for entry in source.rglob("*"):
        if entry.is_symlink() and not entry.resolve().is_relative_to(source):
            raise PlatformError("MaaS.0400", reason=f"{entry.relative_to(source)} is a link that leaves the "
                                                    "directory; copy the file itself.")


def base_card(model_id: str) -> CatalogModel:
    try:
        return builtin(model_id)
    except KeyError:
        raise PlatformError("MaaS.0404", what=f"Base model {model_id!r}") from None


def model_dir(model_id: str) -> Path:
    return get_settings().models_dir / "my" / model_id


def stage(source: Path, base: CatalogModel, model_id: str, kind: str | None) -> tuple[str, Path]:
    """Check, then copy the directory beside the model's versions; `registry` gives it its number."""
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
