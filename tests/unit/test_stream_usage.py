"""A broken stream is still billed: the relay keeps the engine's running usage (continuous_usage_stats, in every
chunk), strips it from what the client gets unless it asked, and accounts it when the stream ends early."""

from __future__ import annotations

import asyncio
import json

from serve_apps.gateway.admission import Call
from serve_apps.gateway.streams import ChatShape, StreamRelay


def _chunk(i: int, prompt: int = 7) -> str:
    """As vLLM 0.32 writes a chunk with continuous usage: the usage nests, and fields follow it."""
    body = {"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": f"t{i}"}}],
            "usage": {"prompt_tokens": prompt, "total_tokens": prompt + i, "completion_tokens": i,
                      "prompt_tokens_details": {"cached_tokens": 0}}, "system_fingerprint": None}
    return "data: " + json.dumps(body, separators=(",", ":")) + "\n\n"


class _Engine:
    """The rest of an engine stream: batches, then a failure (a dead replica) or the end."""

    def __init__(self, batches, failure=None):
        self.batches, self.failure, self.cancelled = list(batches), failure, False

    def __aiter__(self):
        return self

    async def __anext__(self):
        if self.batches:
            return self.batches.pop(0)
        if self.failure:
            raise self.failure
        raise StopAsyncIteration

    def cancel(self):
        self.cancelled = True


async def _relay(shape, first, rest, call):
    relay, out = StreamRelay(call, None, shape), []
    try:
        async for text in relay.run(first, rest):
            out.append(text)
    except RuntimeError:
        relay.partial()
        return "".join(out), relay
    return "".join(out), relay


def test_running_usage_is_kept_and_stripped():
    call = Call({"project_id": "p"}, "1.2.3.4")
    shape = ChatShape(keep_usage=False, keep_running_usage=False)
    text, relay = asyncio.run(_relay(shape, [_chunk(1), _chunk(2)], _Engine([[_chunk(3)]],
                                                                         RuntimeError("replica died")), call))
    assert '"usage"' not in text and text.count('"content"') == 3
    assert all(json.loads(line[6:]) for line in text.split("\n\n") if line)  # still JSON, every chunk
    assert (call.prompt_tokens, call.completion_tokens, call.usage_final) == (7, 3, False)


def test_a_client_that_asked_for_running_usage_keeps_it():
    shape = ChatShape(keep_usage=True, keep_running_usage=True)
    assert shape.running(_chunk(5)) == _chunk(5)


def test_the_final_usage_chunk_wins_over_the_running_count():
    call = Call({"project_id": "p"}, "")
    final = 'data: {"id":"c","choices":[],"usage":{"prompt_tokens":7,"total_tokens":17,"completion_tokens":10}}\n\n'
    text, relay = asyncio.run(_relay(ChatShape(keep_usage=False), [_chunk(1)], _Engine([[_chunk(2), final]]), call))
    relay.partial()  # a no-op once the engine's final count was seen
    assert (call.completion_tokens, call.usage_final) == (10, True) and "total_tokens\":17" not in text


def test_the_final_usage_chunk_a_client_asked_for_keeps_its_usage():
    call = Call({"project_id": "p"}, "")
    final = 'data: {"id":"c","choices":[],"usage":{"prompt_tokens":7,"total_tokens":9,"completion_tokens":2}}\n\n'
    text, _ = asyncio.run(_relay(ChatShape(keep_usage=True, keep_running_usage=False), [_chunk(1)],
                                 _Engine([[_chunk(2), final]]), call))
    events = [json.loads(line[6:]) for line in text.split("\n\n") if line]
    assert [("usage" in e) for e in events] == [False, False, True]
    assert events[-1]["usage"]["completion_tokens"] == 2
