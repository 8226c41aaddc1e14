"""The engine's report of each call (serve_apps.witness): the counts it reads from what the engine yielded, and
that it reports once when the call ends, however it ends (done, or closed because the caller went away)."""

from __future__ import annotations

import asyncio
import json

import pytest

from serve_apps.witness import ABORT_WAIT_S, UsageWitness, usage_of, witnessed

pytestmark = pytest.mark.unit


def _chunk(content: str, prompt: int, completion: int) -> str:
    body = {"choices": [{"index": 0, "delta": {"content": content}}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                      "prompt_tokens_details": {"cached_tokens": 0}}}
    return f"data: {json.dumps(body, separators=(',', ':'))}\n\n"


R2, R3, R9 = "2" * 32, "3" * 32, "s1-" + "9" * 32  # reservation ids (R9: of accounting shard 1)


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


def _closed_at_10(recorder, abort=None):
    batches = [[_chunk(str(i), 5, i)] for i in range(1, 50)]

    async def run():
        stream = witnessed(_engine(batches), R2, recorder, True)
        async for batch in stream:
            if '"completion_tokens":10' in batch[0]:
                break
        await stream.aclose()  # the caller went away (Serve closes the replica's generator)
        if abort is not None:  # vLLM aborts the request as the stream unwinds, in another task
            await asyncio.sleep(0.05)
            recorder.aborted(*abort)
        await asyncio.sleep(ABORT_WAIT_S + 0.2)

    asyncio.run(run())


def test_a_stream_closed_midway_reports_what_the_engine_had_generated():
    recorder = Recorder()
    _closed_at_10(recorder)
    assert recorder.reports == [(R2, 5, 10, True)]  # no abort seen in time: the last chunk's count


def test_a_stream_closed_midway_reports_vllms_count_at_the_abort():
    """benchmarks/faults.py found it: the last chunk a stream yielded was ~4 tokens behind what vLLM had
    counted when the request was aborted (its output queue and the batcher's buffer)."""
    recorder = Recorder()
    _closed_at_10(recorder, abort=("chatcmpl-" + R2, 5, 14))
    assert recorder.reports == [(R2, 5, 14, True)]
    other = Recorder()
    _closed_at_10(other, abort=("chatcmpl-" + "f" * 32, 5, 14))  # another call's abort: not this one's count
    assert other.reports == [(R2, 5, 10, True)]


def test_a_broken_calls_report_leaves_as_soon_as_vllm_aborts_its_request():
    recorder = Recorder()

    async def run():
        recorder.broken(R3, (5, 10), 0.0, True)
        await asyncio.sleep(0.05)
        assert recorder.reports == []  # waiting for the abort
        recorder.aborted("chatcmpl-" + R3, 5, 12)
        await asyncio.sleep(0.05)  # far less than ABORT_WAIT_S
        assert recorder.reports == [(R3, 5, 12, True)] and not recorder._abort_seen

    asyncio.run(run())


def test_vllms_request_ids_name_the_reservation_of_every_api_and_nothing_else():
    recorder = Recorder()
    for request_id, generated in ((f"chatcmpl-{R2}", 3), (f"cmpl-{R3}_1", 4), (f"resp_{R9}_0", 5)):
        recorder.aborted(request_id, 2, generated)
    for foreign in ("chatcmpl-" + "a" * 31, "chatcmpl-my-own-id", f"embd-{R2}", f"x{R3}", f"resp_{R2}_0_extra"):
        recorder.aborted(foreign, 2, 100)  # a request the platform did not name: not a call's count
    assert dict(recorder._aborted) == {R2: (2, 3), R3: (2, 4), R9: (2, 5)}


def test_no_reservation_no_report():
    recorder = Recorder()

    async def run():
        return [b async for b in witnessed(_engine([[_chunk("a", 1, 1)]]), None, recorder, True)]

    assert len(asyncio.run(run())) == 1 and recorder.reports == []


def test_watch_aborts_hands_over_vllms_final_counts_before_vllm_drops_them():
    from types import SimpleNamespace

    from serve_apps.ray_compat import watch_aborts

    dropped = []

    class Processor:  # vLLM 0.32's OutputProcessor, the parts watch_aborts reads
        def __init__(self):
            self.request_states = {"chatcmpl-" + R9 + "-1a2b": SimpleNamespace(
                external_req_id="chatcmpl-" + R9, prompt_len=7, stats=SimpleNamespace(num_generation_tokens=23))}
            self.external_req_ids = {"chatcmpl-" + R9: ["chatcmpl-" + R9 + "-1a2b"]}

        def abort_requests(self, request_ids, internal):
            for request_id in request_ids:
                dropped.append(self.request_states.pop(request_id, None))
            return list(request_ids)

    processor = Processor()
    engine = SimpleNamespace(_engine_client=SimpleNamespace(output_processor=processor))
    recorder = Recorder()
    assert watch_aborts(engine, recorder.aborted)
    assert processor.abort_requests(["chatcmpl-" + R9 + "-1a2b"], True) == ["chatcmpl-" + R9 + "-1a2b"]
    assert dropped[0] is not None and recorder._aborted == {R9: (7, 23)}
    assert not watch_aborts(SimpleNamespace(), recorder.aborted)  # another engine: no hook, no failure
