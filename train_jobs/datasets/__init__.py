"""Training datasets: read MOSS / Alpaca / ShareGPT JSON Lines and csv / xlsx files into samples, or list their errors.

Beyond the manual (spec §7.3):
- JSON formats also accept one top-level JSON array (the manual's own examples); lines count from the file's start.
- Alpaca's `input` joins the instruction on a new line; `system` and `history` ([question, answer] pairs) are optional.
- MOSS may carry MOSS-003's `meta_instruction` (system prompt) and `num_turns` (checked against `chat`).
- ShareGPT must end on an even position (the model speaks last); `function` is accepted as `function_call`.
- Readers stop at 100 errors and at 1,000,000 rows (DatasetLimits); the control plane validates in a child
  process whose memory is capped (isolated.py).
- csv / xlsx: header names are matched case-insensitively, extra columns and empty rows are ignored, and a
  conversation_id seen again later (even after other ids) appends to that id's conversation, which keeps the
  place of its first row.
"""

from .reader import FORMATS, DatasetCheck, check_dataset, read_dataset, validate_dataset
from .schema import DatasetInvalid, DatasetLimits, RowError, Sample, report

__all__ = ["FORMATS", "DatasetCheck", "DatasetInvalid", "DatasetLimits", "RowError", "Sample", "check_dataset",
           "read_dataset", "report", "validate_dataset"]
