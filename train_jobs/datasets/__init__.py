"""Training datasets: read MOSS / Alpaca / ShareGPT JSONL and csv / xlsx files into samples, or list their errors."""

from .reader import FORMATS, read_dataset, validate_dataset
from .schema import DatasetInvalid, RowError, Sample

__all__ = ["FORMATS", "DatasetInvalid", "RowError", "Sample", "read_dataset", "validate_dataset"]
