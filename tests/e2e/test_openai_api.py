"""The OpenAI-compatible API through the official `openai` client, on the real engines."""

from __future__ import annotations

import base64
import json
import struct

import pytest

CHAT = "tiny-chat"
EMBED = "all-minilm-l6-v2"
ASK = [{"role": "user", "content": "what is the color of the sky ?"}]
DELIVERY = {"type": "function", "function": {
    "name": "get_delivery_date", "description": "Get the delivery date for a customer's order.",
    "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}},
                   "required": ["order_id"], "additionalProperties": False}}}


def test_models_list_has_the_product_shape(client, http):
    models = {m.id: m for m in client.models.list().data}
    assert {CHAT, EMBED} <= set(models)
    raw = http.get("/v1/models").json()
    assert raw["object"] == "list"
    for entry in raw["data"]:
        assert set(entry) == {"id", "object", "created", "owned_by"}
        assert entry["object"] == "model" and isinstance(entry["created"], int) and entry["created"] > 0


def test_chat_answers_with_consistent_usage(client):
    response = client.chat.completions.create(model=CHAT, messages=ASK, max_tokens=24)
    choice = response.choices[0]
    assert response.object == "chat.completion" and response.model == CHAT
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    usage = response.usage
    assert usage.prompt_tokens > 0 and 0 < usage.completion_tokens <= 24
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert getattr(choice.message, "reasoning_content", None) is None  # thinking is off by default


def test_sampling_parameters_are_honoured(client):
    common = dict(model=CHAT, messages=ASK, max_tokens=12, temperature=1.0, top_p=0.9, seed=7,
                  extra_body={"top_k": 20, "ignore_eos": True})
    first = client.chat.completions.create(**common).choices[0].message.content
    again = client.chat.completions.create(**common).choices[0].message.content
    assert first == again  # same seed, same output
    many = client.chat.completions.create(model=CHAT, messages=ASK, max_tokens=8, n=3, temperature=1.0,
                                          extra_body={"top_k": 50})
    assert [c.index for c in many.choices] == [0, 1, 2]
    capped = client.chat.completions.create(model=CHAT, messages=ASK, max_tokens=5, extra_body={"ignore_eos": True},
                                            presence_penalty=1.5, frequency_penalty=-0.5)
    assert capped.usage.completion_tokens == 5 and capped.choices[0].finish_reason == "length"
    greedy = client.chat.completions.create(model=CHAT, messages=ASK, max_tokens=30, temperature=0)
    text = greedy.choices[0].message.content
    word = text.split()[1]
    cut = client.chat.completions.create(model=CHAT, messages=ASK, max_tokens=30, temperature=0, stop=[word])
    assert word not in cut.choices[0].message.content and len(cut.choices[0].message.content) < len(text)


def test_stream_without_usage_request_hides_usage(client):
    chunks = list(client.chat.completions.create(model=CHAT, messages=ASK, max_tokens=16, stream=True))
    assert chunks and all(chunk.choices for chunk in chunks)
    assert all(chunk.usage is None for chunk in chunks)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert "".join(c.choices[0].delta.content or "" for c in chunks)


def test_stream_with_usage_ends_with_usage_chunk(client):
    chunks = list(client.chat.completions.create(model=CHAT, messages=ASK, max_tokens=10, stream=True,
                                                 stream_options={"include_usage": True},
                                                 extra_body={"ignore_eos": True}))
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens == 10
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_stream_sse_ends_with_done(http):
    body = {"model": CHAT, "messages": ASK, "max_tokens": 4, "stream": True}
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    assert all(json.loads(e[6:])["object"] == "chat.completion.chunk" for e in events[:-1])


def _valid_delivery_call(call) -> None:
    assert call.type == "function" and call.function.name == "get_delivery_date"
    arguments = json.loads(call.function.arguments)
    assert set(arguments) == {"order_id"} and isinstance(arguments["order_id"], str)


@pytest.mark.parametrize("tool_choice", [
    {"type": "function", "function": {"name": "get_delivery_date"}}, "required"])
def test_forced_tool_choice_yields_a_valid_call(client, tool_choice):
    response = client.chat.completions.create(
        model=CHAT, messages=[{"role": "user", "content": "where is my package ?"}], tools=[DELIVERY],
        tool_choice=tool_choice, max_tokens=64, temperature=0)
    calls = response.choices[0].message.tool_calls
    assert calls and len(calls) >= 1
    _valid_delivery_call(calls[0])


def test_auto_tool_call_is_parsed_and_tool_results_are_accepted(client):
    weather = {"type": "function", "function": {"name": "get_weather", "description": "weather for a city",
                                                 "parameters": {"type": "object",
                                                                "properties": {"city": {"type": "string"}},
                                                                "required": ["city"]}}}
    messages = [{"role": "user", "content": "please get weather for paris ."}]
    response = client.chat.completions.create(model=CHAT, messages=messages, tools=[weather], max_tokens=64,
                                              temperature=0)
    message = response.choices[0].message
    assert message.tool_calls, message  # tiny-chat was trained to call tools in the hermes format
    assert message.tool_calls[0].function.name == "get_weather"
    assert json.loads(message.tool_calls[0].function.arguments)["city"]
    assert response.choices[0].finish_reason == "tool_calls"
    # Stateless multi-turn: the caller sends the history back, with the tool's answer.
    follow_up = client.chat.completions.create(model=CHAT, max_tokens=16, tools=[weather], messages=[
        *messages, message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": message.tool_calls[0].id, "content": "sunny, 10 degrees"}])
    assert follow_up.choices[0].message is not None
    assert follow_up.usage.prompt_tokens > response.usage.prompt_tokens


def test_reasoning_content_when_thinking_is_on(client):
    response = client.chat.completions.create(
        model=CHAT, messages=ASK, max_tokens=80, temperature=0,
        extra_body={"chat_template_kwargs": {"enable_thinking": True}})
    message = response.choices[0].message
    assert message.reasoning_content and "think" in message.reasoning_content
    assert message.content and "</think>" not in message.content
    assert response.usage.completion_tokens_details.reasoning_tokens > 0


def test_reasoning_streams_first_then_content(client):
    stream = client.chat.completions.create(
        model=CHAT, messages=ASK, max_tokens=80, temperature=0, stream=True,
        extra_body={"chat_template_kwargs": {"enable_thinking": True}})
    kinds = []
    for chunk in stream:
        delta = chunk.choices[0].delta if chunk.choices else None
        if delta is not None and getattr(delta, "reasoning_content", None):
            kinds.append("reasoning")
        elif delta is not None and delta.content:
            kinds.append("content")
    assert "reasoning" in kinds and "content" in kinds
    assert kinds.index("content") > kinds.index("reasoning")
    assert "reasoning" not in kinds[kinds.index("content"):]


def test_completions_plain_and_streamed(client):
    response = client.completions.create(model=CHAT, prompt="the sky is", max_tokens=6,
                                         extra_body={"ignore_eos": True})
    assert response.object == "text_completion" and response.choices[0].text
    assert response.usage.completion_tokens == 6
    assert response.usage.total_tokens == response.usage.prompt_tokens + 6
    chunks = list(client.completions.create(model=CHAT, prompt="the sky is", max_tokens=6, stream=True,
                                            stream_options={"include_usage": True},
                                            extra_body={"ignore_eos": True}))
    assert chunks[-1].usage.completion_tokens == 6
    assert "".join(c.choices[0].text for c in chunks if c.choices)


def test_embeddings_float_and_base64_agree(client, http):
    floats = client.embeddings.create(model=EMBED, input=["red roses", "blue sea"], encoding_format="float")
    assert [d.index for d in floats.data] == [0, 1]
    assert all(len(d.embedding) == 384 for d in floats.data)
    assert floats.usage.prompt_tokens > 0 and floats.usage.total_tokens == floats.usage.prompt_tokens
    raw = http.post("/v1/embeddings", json={"model": EMBED, "input": "red roses", "encoding_format": "base64"}).json()
    assert raw["object"] == "list" and raw["data"][0]["object"] == "embedding"
    blob = base64.b64decode(raw["data"][0]["embedding"])
    decoded = struct.unpack(f"<{len(blob) // 4}f", blob)
    assert decoded == pytest.approx(floats.data[0].embedding, abs=1e-5)
    single = client.embeddings.create(model=EMBED, input="red roses")  # the SDK asks for base64
    assert single.data[0].embedding == pytest.approx(floats.data[0].embedding, abs=1e-5)


def test_rerank_sorts_by_relevance(http):
    documents = ["the weather is nice today", "brewing coffee with a french press", "cats sleep a lot",
                 "how to grind coffee beans for espresso"]
    response = http.post("/v1/rerank", json={"model": EMBED, "query": "how do I make coffee", "documents": documents})
    assert response.status_code == 200, response.text
    body = response.json()
    scores = [r["relevance_score"] for r in body["results"]]
    assert scores == sorted(scores, reverse=True) and len(scores) == 4
    assert {r["index"] for r in body["results"][:2]} == {1, 3}
    assert all(r["document"]["text"] == documents[r["index"]] for r in body["results"])
    assert body["usage"]["total_tokens"] > 0 and body["id"].startswith("rerank-")


def test_prompts_and_completions_are_not_logged(client):
    import time
    import uuid
    from pathlib import Path

    from tests.helpers import RAY_TEMP_DIR

    marker = f"zebra{uuid.uuid4().hex[:12]}"
    response = client.chat.completions.create(model=CHAT, max_tokens=8,
                                              messages=[{"role": "user", "content": f"say {marker} ."}])
    time.sleep(3)  # let the log files flush
    logs = Path(RAY_TEMP_DIR) / "session_latest" / "logs"
    texts = [p.read_text(errors="ignore") for p in logs.rglob("*") if p.is_file() and p.suffix in (".log", ".out", ".err")]
    assert any("/v1/chat/completions" in t for t in texts)  # these are the logs the requests went through
    assert not any(marker in t for t in texts)
    assert not any(response.choices[0].message.content in t for t in texts if len(response.choices[0].message.content) > 12)
