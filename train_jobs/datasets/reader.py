"""Read and validate a training dataset file in one of the supported formats, a row at a time: a reader keeps
the samples only when they are asked for (`read_dataset`), stops at `limits.max_errors` errors and at
`limits.max_rows` rows."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from .alpaca import ALPACA, ALPACA_PRETRAIN
from .jsonl import read_json_dataset
from .moss import MOSS
from .schema import DatasetInvalid, DatasetLimits, RowError, Sample
from .sharegpt import SHAREGPT
from .tables import read_csv_dataset, read_xlsx_dataset

FORMATS = ("moss", "alpaca", "sharegpt", "csv", "xlsx")
KINDS = ("sft", "pretrain")

# (path, limits, keep: whether the samples are wanted) -> samples and errors in file order
DatasetReader = Callable[[Path, DatasetLimits, bool], Iterator[Sample | RowError]]

# The manual (Table 7-3): continued pre-training reads Alpaca `{"text": ...}` rows only.
_READERS: dict[tuple[str, str], DatasetReader] = {
    ("moss", "sft"): partial(read_json_dataset, fmt=MOSS),
    ("alpaca", "sft"): partial(read_json_dataset, fmt=ALPACA),
    ("alpaca", "pretrain"): partial(read_json_dataset, fmt=ALPACA_PRETRAIN),
    ("sharegpt", "sft"): partial(read_json_dataset, fmt=SHAREGPT),
    ("csv", "sft"): read_csv_dataset,
    ("xlsx", "sft"): read_xlsx_dataset,
}


@dataclass(frozen=True)
class DatasetCheck:
    """What validating a file found: how many samples it holds and its errors (the first ones when `stopped`)."""

    samples: int
    errors: list[RowError]
    stopped: bool = False  # the reader stopped at limits.max_errors errors; the file may have more


def read_dataset(path: str | os.PathLike, fmt: str, kind: str = "sft",
                 limits: DatasetLimits = DatasetLimits()) -> list[Sample]:
    """Every sample of the file, in file order; raises DatasetInvalid with the file's (first) errors."""
    samples: list[Sample] = []
    check = _scan(Path(path), fmt, kind, limits, samples.append)
    if check.errors:
        raise DatasetInvalid(check.errors, check.stopped)
    return samples


def check_dataset(path: str | os.PathLike, fmt: str, kind: str = "sft",
                  limits: DatasetLimits = DatasetLimits()) -> DatasetCheck:
    """The file's sample count and errors, keeping no sample."""
    return _scan(Path(path), fmt, kind, limits, None)


def validate_dataset(path: str | os.PathLike, fmt: str, kind: str = "sft",
                     limits: DatasetLimits = DatasetLimits()) -> list[RowError]:
    """The file's errors in file order (at most limits.max_errors); [] when the file is a valid dataset."""
    return check_dataset(path, fmt, kind, limits).errors


def _scan(path: Path, fmt: str, kind: str, limits: DatasetLimits,
          keep: Callable[[Sample], None] | None) -> DatasetCheck:
    unsupported = _unsupported(fmt, kind)
    if unsupported:
        return DatasetCheck(0, [unsupported])
    if not path.is_file():
        raise FileNotFoundError(f"dataset file not found: {path}")
    count, errors = 0, []
    items = _READERS[(fmt, kind)](path, limits=limits, keep=keep is not None)
    try:
        for item in items:
            if isinstance(item, RowError):
                errors.append(item)
                if len(errors) >= limits.max_errors:
                    return DatasetCheck(count, errors, stopped=True)
            else:
                count += 1
                if keep is not None:
                    keep(item)
    finally:
        items.close()  # a reader stopped early closes its file now
    if not count and not errors:
        errors.append(RowError(line=0, field="file", reason="the file has no samples"))
    return DatasetCheck(count, errors)


def _unsupported(fmt: str, kind: str) -> RowError | None:
    if fmt not in FORMATS:
        return RowError(line=0, field="format", reason=f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if kind not in KINDS:
        return RowError(line=0, field="kind", reason=f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
    if (fmt, kind) not in _READERS:
        return RowError(line=0, field="format", reason=f"format {fmt!r} does not support {kind!r} datasets")
    return None
