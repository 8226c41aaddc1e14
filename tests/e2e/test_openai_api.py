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


def _tokens(client, max_tokens: int = 24, **params) -> list[tuple[int, ...]]:
    """The token ids of each choice of a chat answer to ASK that runs to `max_tokens` (ignore_eos): compared as ids,
    not as text, so that nothing a parser or the detokenizer does can make two different answers look equal."""
    extra = params.pop("extra_body", {})
    response = client.chat.completions.create(model=CHAT, messages=ASK, max_tokens=max_tokens,
                                              extra_body={"ignore_eos": True, "return_token_ids": True} | extra,
                                              **params)
    assert response.usage.completion_tokens == max_tokens * len(response.choices)
    assert all(c.finish_reason == "length" and len(c.token_ids) == max_tokens for c in response.choices)
    return [tuple(c.token_ids) for c in response.choices]


def test_sampling_parameters_are_honoured(client):
    [greedy] = _tokens(client, temperature=0)
    seeds = range(1, 5)
    # Sampled at temperature 1 the answers vary with the seed (tiny-chat's next token is far from certain in 24)...
    assert any(_tokens(client, temperature=1.0, seed=seed) != [greedy] for seed in seeds)
    # ... and the same seed gives the same answer.
    same = dict(temperature=1.0, top_p=0.9, seed=7, extra_body={"top_k": 20})
    assert _tokens(client, **same) == _tokens(client, **same)
    # top_k=1, and a top_p below 1/1077 (tiny-chat has 1,077 tokens: its likeliest one always has more), leave only
    # the likeliest token: the greedy answer, whatever the seed. (top_p=0.01 does not: where tiny-chat's next word is
    # almost uniform, its likeliest token has less than 1 %.)
    for seed in seeds:
        assert _tokens(client, temperature=1.0, seed=seed, extra_body={"top_k": 1}) == [greedy], seed
        assert _tokens(client, temperature=1.0, seed=seed, top_p=1e-4) == [greedy], seed
    # Penalties on tokens already generated change a greedy answer that repeats tokens (tiny-chat's does).
    [long] = _tokens(client, max_tokens=30, temperature=0)
    assert len(set(long)) < len(long)
    assert _tokens(client, max_tokens=30, temperature=0, frequency_penalty=2.0) != [long]
    assert _tokens(client, max_tokens=30, temperature=0, presence_penalty=2.0) != [long]
    assert _tokens(client, max_tokens=30, temperature=0, frequency_penalty=0.0, presence_penalty=0.0) == [long]
    # n=3 sampled: three real completions of their own (indices, each to its length, usage for all of them).
    many = client.chat.completions.create(model=CHAT, messages=ASK, max_tokens=30, n=3, temperature=1.0,
                                          extra_body={"ignore_eos": True, "return_token_ids": True})
    assert [c.index for c in many.choices] == [0, 1, 2]
    assert many.usage.completion_tokens == 90 and all(len(c.token_ids) == 30 for c in many.choices)
    assert len({tuple(c.token_ids) for c in many.choices}) == 3
    greedy_text = client.chat.completions.create(model=CHAT, messages=ASK, max_tokens=30, temperature=0)
    text = greedy_text.choices[0].message.content
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


def test_auto_tool_call_is_parsed_and_tool_results_are_accepted(platform, client):
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
    follow_up = client.chat.completions.create(
        model=CHAT, max_tokens=16, temperature=0, tools=[weather], extra_body={"return_token_ids": True},
        messages=[*messages, message.model_dump(exclude_none=True),
                  {"role": "tool", "tool_call_id": message.tool_calls[0].id, "content": "sunny, 10 degrees"}])
    # The engine read the call and its result where the chat template puts them, last before the answer...
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(platform.home / "models" / CHAT / "tokenizer.json"))
    prompt = tokenizer.decode(follow_up.prompt_token_ids, skip_special_tokens=False)
    tail = ("</tool_call><|im_end|>\n<|im_start|>user\n<tool_response>\nsunny, 10 degrees\n</tool_response>"
            "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert prompt.endswith(tail), prompt
    sent_back = json.loads(prompt[:-len(tail)].rsplit("<tool_call>", 1)[1])
    assert sent_back == {"name": "get_weather", "arguments": json.loads(message.tool_calls[0].function.arguments)}
    assert follow_up.usage.prompt_tokens == len(follow_up.prompt_token_ids) > response.usage.prompt_tokens
    # ... and answered it: text the engine generated (its tokens, all counted), not another call.
    answer = follow_up.choices[0]
    assert answer.message.content and answer.message.content.strip() and not answer.message.tool_calls, answer
    assert answer.finish_reason in ("stop", "length") and follow_up.usage.completion_tokens == len(answer.token_ids)


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
    import uuid
    from pathlib import Path

    from tests.helpers import RAY_TEMP_DIR, wait_for

    marker, request_id = f"zebra{uuid.uuid4().hex[:12]}", f"logcheck-{uuid.uuid4().hex}"
    response = client.chat.completions.create(model=CHAT, max_tokens=8, extra_headers={"X-Request-ID": request_id},
                                              messages=[{"role": "user", "content": f"say {marker} ."}])
    logs = Path(RAY_TEMP_DIR) / "session_latest" / "logs"

    def texts() -> list[str]:
        return [p.read_text(errors="ignore") for p in logs.rglob("*")
                if p.is_file() and p.suffix in (".log", ".out", ".err")]

    # These are the logs this very request went through: Serve's access line of it (its X-Request-ID), written.
    wait_for(lambda: any(request_id in line and "/v1/chat/completions" in line
                         for text in texts() for line in text.splitlines()), 30, "the call's own access log line")
    written = texts()
    assert not any(marker in t for t in written)
    answer = response.choices[0].message.content
    assert not any(answer in t for t in written if len(answer) > 12)
