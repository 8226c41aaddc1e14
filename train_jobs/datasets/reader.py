"""Read and validate a training dataset file in one of the supported formats."""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial
from pathlib import Path

from .alpaca import ALPACA, ALPACA_PRETRAIN
from .jsonl import read_json_dataset
from .moss import MOSS
from .schema import DatasetInvalid, RowError, Sample
from .sharegpt import SHAREGPT
from .tables import read_csv_dataset, read_xlsx_dataset

FORMATS = ("moss", "alpaca", "sharegpt", "csv", "xlsx")
KINDS = ("sft", "pretrain")

DatasetReader = Callable[[Path], tuple[list[Sample], list[RowError]]]

# The manual (Table 7-3): continued pre-training reads Alpaca `{"text": ...}` rows only.
_READERS: dict[tuple[str, str], DatasetReader] = {
    ("moss", "sft"): partial(read_json_dataset, fmt=MOSS),
    ("alpaca", "sft"): partial(read_json_dataset, fmt=ALPACA),
    ("alpaca", "pretrain"): partial(read_json_dataset, fmt=ALPACA_PRETRAIN),
    ("sharegpt", "sft"): partial(read_json_dataset, fmt=SHAREGPT),
    ("csv", "sft"): read_csv_dataset,
    ("xlsx", "sft"): read_xlsx_dataset,
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
    samples, errors = _READERS[(fmt, kind)](path)
    if not samples and not errors:
        errors.append(RowError(line=0, field="file", reason="the file has no samples"))
    return samples, errors


def _unsupported(fmt: str, kind: str) -> RowError | None:
    if fmt not in FORMATS:
        return RowError(line=0, field="format", reason=f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if kind not in KINDS:
        return RowError(line=0, field="kind", reason=f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
    if (fmt, kind) not in _READERS:
        return RowError(line=0, field="format", reason=f"format {fmt!r} does not support {kind!r} datasets")
    return None
