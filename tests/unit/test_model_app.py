"""The stream batcher of the model application."""

from __future__ import annotations

import asyncio
import time

from serve_apps.model_app import FirstChunkBatcher


def test_first_chunks_leave_at_once_and_the_rest_in_batches():
    async def tokens():
        for i in range(12):
            await asyncio.sleep(0.004)
            yield i

    async def collect():
        start, batches = time.perf_counter(), []
        async for batch in FirstChunkBatcher(tokens(), interval_ms=20).stream():
            batches.append((time.perf_counter() - start, batch))
        return batches

    batches = asyncio.run(collect())
    assert [item for _, batch in batches for item in batch] == list(range(12))  # nothing lost or reordered
    assert batches[0][1] == [0] and batches[0][0] < 0.015  # the first chunk is not held back
    assert batches[1][1] == [1] and batches[1][0] < 0.025
    assert any(len(batch) > 1 for _, batch in batches[2:])  # later chunks travel together
    assert len(batches) < 12
