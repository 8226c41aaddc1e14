"""Every use of llmcompressor internals, in one place (checked on llmcompressor 0.14.0.1).

- AWQ pins its cached activations (`IntermediatesCache.pin_memory`) for faster host-to-device copies; with no
  accelerator, `Tensor.pin_memory()` raises "Cannot access accelerator device when none is available". On a
  CPU-only host pinning is useless, so it becomes a no-op there.
- Progress: the sequential pipeline calibrates one subgraph (about one decoder layer) after another, each
  announced by `_get_batches(..., desc="(i/n): Calibrating")`; wrapping it tells how far a job is.
"""

from __future__ import annotations

import re
from collections.abc import Callable

TESTED_VERSION = "0.14.0.1"
_SUBGRAPH = re.compile(r"^\((\d+)/(\d+)\): Calibrating")


def no_pinning_without_accelerator() -> None:
    import torch
    from llmcompressor.pipelines.cache import IntermediatesCache

    if torch.accelerator.is_available():
        return
    IntermediatesCache.pin_memory = lambda self, batch_index, input_names=None: None


def on_subgraph(callback: Callable[[int, int], None]) -> None:
    """Call `callback(done, total)` when the sequential pipeline starts calibrating subgraph done+1 of total."""
    from llmcompressor.pipelines.sequential import pipeline

    original = pipeline._get_batches

    def announced(activations, num_batches, input_names, desc, *args, **kwargs):
        match = _SUBGRAPH.match(desc or "")
        if match:
            callback(int(match.group(1)) - 1, int(match.group(2)))
        return original(activations, num_batches, input_names, desc, *args, **kwargs)

    pipeline._get_batches = announced
