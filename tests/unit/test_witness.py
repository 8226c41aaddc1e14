"""The engine's report of each call (serve_apps.witness): the counts it reads from what the engine yielded, and
that it reports once when the call ends, however it ends (done, or closed because the caller went away)."""

from __future__ import annotations

import asyncio
import json

import pytest

from serve_apps.witness import UsageWitness, usage_of, witnessed

pytestmark = pytest.mark.unit


def _chunk(content: str, prompt: int, completion: int) -> str:
    body = {"choices": [{"index": 0, "delta": {"content": content}}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                      "prompt_tokens_details": {"cached_tokens": 0}}}
    return f"data: {json.dumps(body, separators=(',', ':'))}\n\n"


class Recorder(UsageWitness):
    def __init__(self):
        super().__init__(actor_getter=lambda shard: None)
        self.reports = []

    def report(self, reservation, prompt, completion, started, stream):
        self.reports.append((reservation, prompt, completion, stream))


async def _engine(batches):
    for batch in batches:
        await asyncio.sleep(0)
        yield batch


def test_counts_from_streamed_batches_and_whole_answers():
    assert usage_of([_chunk("a", 5, 1), _chunk("b", 5, 2)]) == (5, 2)  # the last running count
    assert usage_of(["data: [DONE]\n\n"]) is None
    assert usage_of({"usage": {"input_tokens": 4, "output_tokens": 9}}) == (4, 9)  # Responses / Messages
    assert usage_of(None) is None and usage_of(object()) is None


def test_a_finished_stream_is_reported_once_with_the_final_count_even_when_done_travels_alone():
    recorder = Recorder()
    batches = [[_chunk("a", 5, 1)], [_chunk("b", 5, 2), _chunk("c", 5, 3)], ["data: [DONE]\n\n"]]

    async def run():
        return [batch async for batch in witnessed(_engine(batches), "r1", recorder, True)]

    assert asyncio.run(run()) == batches  # relayed unchanged
    assert recorder.reports == [("r1", 5, 3, True)]


def test_a_stream_closed_midway_reports_what_the_engine_had_generated():
    recorder = Recorder()
    batches = [[_chunk(str(i), 5, i)] for i in range(1, 50)]

    async def run():
        stream = witnessed(_engine(batches), "r2", recorder, True)
        async for batch in stream:
            if '"completion_tokens":10' in batch[0]:
                break
        await stream.aclose()  # the caller went away (Serve closes the replica's generator)

    asyncio.run(run())
    assert recorder.reports == [("r2", 5, 10, True)]


def test_no_reservation_no_report():
    recorder = Recorder()

    async def run():
        return [b async for b in witnessed(_engine([[_chunk("a", 1, 1)]]), None, recorder, True)]

    assert len(asyncio.run(run())) == 1 and recorder.reports == []
