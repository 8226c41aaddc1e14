"""Which samples each step reads, on which worker: a pure function of (seed, step), so a resumed run reads
exactly what an uninterrupted one would.

The data is a stream of epochs, each a seeded permutation of the samples; step s takes stream positions
[s*B, (s+1)*B) (the last step may be shorter) and worker r takes every W-th of them from r.
"""

from __future__ import annotations

import random
from functools import lru_cache


@lru_cache(maxsize=4)
def epoch_order(n: int, seed: int, epoch: int) -> tuple[int, ...]:
    order = list(range(n))
    random.Random(f"{seed}:{epoch}").shuffle(order)
    return tuple(order)


def step_samples(step: int, n: int, epochs: int, global_batch_size: int, seed: int) -> list[int]:
    """Sample indices of the global batch of `step` (0-based)."""
    start = step * global_batch_size
    stop = min(start + global_batch_size, n * epochs)
    return [epoch_order(n, seed, pos // n)[pos % n] for pos in range(start, stop)]


def shard(indices: list[int], rank: int, world_size: int) -> list[int]:
    return indices[rank::world_size]


def position(step: int, n: int, global_batch_size: int) -> tuple[int, int]:
    """(epoch, index within the epoch) of the first sample step `step` reads."""
    return divmod(step * global_batch_size, n)
