"""Read and validate a training dataset file in one of the supported formats."""

from __future__ import annotations

import os
from pathlib import Path

from .alpaca import ALPACA, ALPACA_PRETRAIN
from .jsonl import JsonFormat, read_json_samples
from .schema import DatasetInvalid, RowError, Sample

FORMATS = ("moss", "alpaca", "sharegpt", "csv", "xlsx")
KINDS = ("sft", "pretrain")

_JSON_FORMATS: dict[tuple[str, str], JsonFormat] = {
    ("alpaca", "sft"): ALPACA,
    ("alpaca", "pretrain"): ALPACA_PRETRAIN,
}


def read_dataset(path: str | os.PathLike, fmt: str, kind: str = "sft") -> list[Sample]:
    """Every sample of the file, in file order; raises DatasetInvalid listing every error of the file."""
    samples, errors = _read(Path(path), fmt, kind)
    if errors:
        raise DatasetInvalid(errors)
    return samples


def validate_dataset(path: str | os.PathLike, fmt: str, kind: str = "sft") -> list[RowError]:
    """Every error of the file, in file order; [] when the file is a valid dataset."""
    return _read(Path(path), fmt, kind)[1]


def _read(path: Path, fmt: str, kind: str) -> tuple[list[Sample], list[RowError]]:
    unsupported = _unsupported(fmt, kind)
    if unsupported:
        return [], [unsupported]
    if not path.is_file():
        raise FileNotFoundError(f"dataset file not found: {path}")
    samples: list[Sample] = []
    errors: list[RowError] = []
    for _, result in read_json_samples(path, _JSON_FORMATS[(fmt, kind)]):
        if isinstance(result, Sample):
            samples.append(result)
        else:
            errors += result
    if not samples and not errors:
        errors.append(RowError(line=0, field="file", reason="the file is empty"))
    return samples, errors


def _unsupported(fmt: str, kind: str) -> RowError | None:
    if fmt not in FORMATS:
        return RowError(line=0, field="format", reason=f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if kind not in KINDS:
        return RowError(line=0, field="kind", reason=f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
    if (fmt, kind) not in _JSON_FORMATS:
        return RowError(line=0, field="format", reason=f"format {fmt!r} is not supported for {kind!r} datasets")
    return None
