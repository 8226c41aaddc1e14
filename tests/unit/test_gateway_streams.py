"""The gateway's stream relay for each API shape (usage from the right events, vLLM-only fields cut, moderation
ending a stream in that API's own terms), its key check (Bearer or x-api-key) and the texts it moderates."""

from __future__ import annotations

import asyncio
import json

from serve_apps.gateway.admission import Call
from serve_apps.gateway.guard import api_key
from serve_apps.gateway.protocol import MessagesRequest, ResponsesRequest, completion_budget
from serve_apps.gateway.streams import ChatShape, MessagesShape, ResponsesShape, StreamRelay
from serve_apps.moderation import TermListModerator, output_text, request_text

RECORD = {"project_id": "p", "key_id": "k", "model": "m", "service_type": "free", "service_id": "s", "endpoint_id": ""}


class Rest:
    def __init__(self, batches):
        self.batches, self.cancelled = list(batches), False

    def __aiter__(self):
        return self

    async def __anext__(self):
        if not self.batches:
            raise StopAsyncIteration
        return self.batches.pop(0)

    def cancel(self):
        self.cancelled = True


def relay(shape, batches, terms=()):
    call = Call(RECORD, "127.0.0.1", stream=True)
    moderator = TermListModerator(list(terms)) if terms else None
    rest = Rest(batches[1:])

    async def run():
        return "".join([text async for text in StreamRelay(call, moderator, shape).run(batches[0], rest)])

    return asyncio.run(run()), call, rest


def sse(event: str, body: dict) -> str:
    return f"event: {event}\ndata: {json.dumps(body, separators=(',', ':'))}\n\n"


def test_chat_stream_loses_vllm_fields_and_hidden_usage_but_is_accounted():
    role = ('data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant",'
            '"content":""},"logprobs":null,"finish_reason":null}],"prompt_token_ids":null,"prompt_text":null}\n\n')
    token = ('data: {"id":"c","choices":[{"index":0,"delta":{"reasoning":"hm","content":"a \\",\\"token_ids\\":null"},'
             '"logprobs":null,"finish_reason":null,"token_ids":null}]}\n\n')
    usage = 'data: {"id":"c","choices":[],"usage":{"prompt_tokens":7,"completion_tokens":2}}\n\n'
    text, call, _ = relay(ChatShape(keep_usage=False), [[role], [token, usage], ["data: [DONE]\n\n"]])
    events = [json.loads(line[6:]) for line in text.split("\n\n") if line.startswith("data: {")]
    assert "token_ids" not in text.replace('\\"token_ids\\"', "") and "prompt_text" not in text
    assert events[1]["choices"][0]["delta"] == {"reasoning_content": "hm", "content": 'a ","token_ids":null'}
    assert all("usage" not in e for e in events) and text.endswith("data: [DONE]\n\n")
    assert (call.prompt_tokens, call.completion_tokens) == (7, 2)


def test_responses_stream_usage_from_the_terminal_event_and_moderation():
    created = sse("response.created", {"type": "response.created", "response": {"id": "r"}})
    delta = sse("response.output_text.delta", {"type": "response.output_text.delta", "delta": "the sky"})
    done = sse("response.completed", {"type": "response.completed",
                                      "response": {"usage": {"input_tokens": 5, "output_tokens": 3}}})
    text, call, _ = relay(ResponsesShape(), [[created, delta], [done]])
    assert text == created + delta + done and (call.prompt_tokens, call.completion_tokens) == (5, 3)
    text, call, rest = relay(ResponsesShape(), [[created], [delta], [done]], terms=["sky"])
    assert rest.cancelled and text.startswith(created) and "the sky" not in text
    assert json.loads(text.split("data: ")[-1])["code"] == "ModelArts.81011"


def test_messages_stream_usage_from_start_and_delta_events_and_moderation():
    start = sse("message_start", {"type": "message_start", "message": {"usage": {"input_tokens": 9,
                                                                                  "output_tokens": 0}}})
    block = sse("content_block_delta", {"type": "content_block_delta", "delta": {"type": "text_delta",
                                                                                 "text": "hello"}})
    end = sse("message_delta", {"type": "message_delta", "usage": {"output_tokens": 4}})
    text, call, _ = relay(MessagesShape(), [[start], [block, end]])
    assert text == start + block + end and (call.prompt_tokens, call.completion_tokens) == (9, 4)
    text, _, rest = relay(MessagesShape(), [[start], [block, end]], terms=["hello"])
    assert rest.cancelled and "hello" not in text and '"type":"error"' in text.replace(" ", "")


def test_key_from_bearer_or_x_api_key():
    assert api_key({b"authorization": b"Bearer abc"}) == "abc"
    assert api_key({b"x-api-key": b"xyz"}) == "xyz"
    assert api_key({b"authorization": b"Basic abc"}) == ""


def test_responses_and_messages_texts_and_budgets():
    responses = ResponsesRequest.model_validate({
        "model": "m", "input": [{"role": "user", "content": "hello there"}], "instructions": "be brief",
        "max_output_tokens": 12,
        "tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}]})
    assert request_text(responses).split("\n") == ["hello there", "be brief", "get_weather", '{"type": "object"}']
    assert completion_budget(responses) == 12
    messages = MessagesRequest.model_validate({"model": "m", "max_tokens": 5, "system": "sys", "messages": [
        {"role": "user", "content": [{"type": "text", "text": "hi"}]}]})
    assert request_text(messages).split("\n") == ["hi", "sys"] and completion_budget(messages) == 5
    assert output_text([{"type": "tool_use", "id": "t1", "name": "f", "input": {"city": "paris"}}]) == "f\nparis"


def test_a_broken_streams_latency_ends_when_the_stream_did_not_when_its_count_came():
    """Its settlement waits (up to 5 s) for the engine's count: the wait is not the call's latency."""
    from serve_apps.gateway.admission import Settler

    sent = []

    async def actor(shard):
        class A:
            class settle_many:
                @staticmethod
                async def remote(settlements):
                    sent.extend(settlements)
        return A

    async def run():
        settler = Settler(actor)
        call = Call({"project_id": "p"}, "127.0.0.1", "r1", stream=True)
        call.ended_at = call.started + 0.05
        settler.submit_after(asyncio.sleep(0.3), call, 499, "MaaS.0499")
        assert settler.pending == 1
        assert await settler.drain(5) == 0
    asyncio.run(run())
    [(_, record)] = sent
    assert record["status_code"] == 499 and abs(record["latency_ms"] - 50) < 1
