"""What today's clients call, through the gateway, with their official SDKs: `openai` (chat with a named tool
and a JSON schema, the Responses API), `anthropic` (Messages, streamed and not) and `langchain-openai`
(bind_tools with a named choice, with_structured_output by JSON schema and by function calling). Every forced
call and every structured answer must parse and validate against its schema, even from tiny-chat."""

from __future__ import annotations

import json
import time

import anthropic
import jsonschema
import pytest
from pydantic import BaseModel
from sqlalchemy import create_engine, text

CHAT = "tiny-chat"
CITY = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 24}}, "required": ["city"],
        "additionalProperties": False}
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "weather for a city",
                                             "parameters": CITY}}
DELIVERY = {"type": "function", "function": {
    "name": "get_delivery_date", "description": "Get the delivery date for a customer's order.",
    "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]}}}
PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 16},
                                           "age": {"type": "integer", "minimum": 0, "maximum": 150}},
          "required": ["name", "age"], "additionalProperties": False}
# The order the model was trained to answer with a delivery call: only the constraint makes it a weather call.
LATE = [{"role": "user", "content": "my order E2718 is late"}]
VLLM_ONLY = {"token_ids", "routed_experts", "prompt_logprobs", "prompt_token_ids", "prompt_text",
             "kv_transfer_params", "ec_transfer_params", "metrics"}


@pytest.fixture(scope="module")
def key(platform) -> dict:
    return platform.new_key("clients")


@pytest.fixture(scope="module")
def oai(platform, key):
    return platform.client(key["key"])


def _records(platform, key_id: str, count: int) -> list[dict]:
    engine = create_engine(platform.database_url)
    deadline = time.time() + 30
    while True:
        with engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(
                text("SELECT * FROM usage_records WHERE key_id = :k ORDER BY ts"), {"k": key_id})]
        if len(rows) >= count or time.time() > deadline:
            return rows
        time.sleep(0.2)


def test_named_and_required_tool_choice_follow_the_schema(oai, http):
    for choice in ({"type": "function", "function": {"name": "get_weather"}}, "required"):
        for temperature in (0, 1.0):
            answer = oai.chat.completions.create(model=CHAT, messages=LATE, tools=[WEATHER, DELIVERY] if choice != "required" else [WEATHER],
                                                 tool_choice=choice, max_tokens=64, temperature=temperature)
            call = answer.choices[0].message.tool_calls[0]
            assert call.function.name == "get_weather"
            jsonschema.validate(json.loads(call.function.arguments), CITY)
    raw = http.post("/v1/chat/completions", json={"model": CHAT, "messages": LATE, "tools": [WEATHER],
                                                   "tool_choice": "required", "max_tokens": 64}).json()
    assert not VLLM_ONLY & set(raw) and not VLLM_ONLY & set(raw["choices"][0])


def test_response_format_json_schema_and_json_object(oai, http):
    schema = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    for stream in (False, True):
        kwargs = dict(model=CHAT, messages=[{"role": "user", "content": "describe a person as json"}],
                      response_format=schema, max_tokens=64, temperature=0)
        if stream:
            chunks = list(oai.chat.completions.create(**kwargs, stream=True))
            content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        else:
            content = oai.chat.completions.create(**kwargs).choices[0].message.content
        jsonschema.validate(json.loads(content), PERSON)
    answer = oai.chat.completions.create(model=CHAT, messages=[{"role": "user", "content": "a json object ?"}],
                                         response_format={"type": "json_object"}, max_tokens=64, temperature=0)
    assert isinstance(json.loads(answer.choices[0].message.content), dict)
    with http.stream("POST", "/v1/chat/completions", json={
            "model": CHAT, "messages": LATE, "max_tokens": 8, "stream": True,
            "stream_options": {"include_usage": True}}) as response:
        events = [json.loads(line[6:]) for line in response.iter_lines()
                  if line.startswith("data: {")]
    assert events and all(not VLLM_ONLY & set(e) and not any(VLLM_ONLY & set(c) for c in e["choices"])
                          for e in events)


def test_model_by_id(oai, http):
    model = oai.models.retrieve(CHAT)
    assert (model.id, model.object) == (CHAT, "model") and model.created > 0
    missing = http.get("/v1/models/no-such-model")
    assert missing.status_code == 404 and missing.json()["code"] == 404


def test_responses_text_tools_and_stream(platform, oai, key):
    text_answer = oai.responses.create(model=CHAT, input="what is the color of the sky ?", max_output_tokens=16)
    assert text_answer.status in ("completed", "incomplete") and text_answer.output_text
    assert text_answer.usage.input_tokens > 0 and 0 < text_answer.usage.output_tokens <= 16
    tool = {"type": "function", "name": "get_weather", "description": "weather for a city", "parameters": CITY}
    called = oai.responses.create(model=CHAT, input=LATE, tools=[tool], max_output_tokens=64,
                                  tool_choice={"type": "function", "name": "get_weather"})
    calls = [item for item in called.output if item.type == "function_call"]
    assert calls and calls[0].name == "get_weather"
    jsonschema.validate(json.loads(calls[0].arguments), CITY)
    events = list(oai.responses.create(model=CHAT, input="hello", max_output_tokens=12, stream=True))
    types = [e.type for e in events]
    assert types[0] == "response.created" and types[-1] == "response.completed"
    streamed = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert streamed and events[-1].response.output_text == streamed
    rows = _records(platform, key["id"], 1)
    assert rows and all(r["status_code"] == 200 for r in rows)


def test_anthropic_messages_plain_and_streamed(platform):
    key = platform.new_key("anthropic")
    client = anthropic.Anthropic(base_url=platform.base_url, api_key=key["key"], max_retries=0, timeout=120)
    message = client.messages.create(model=CHAT, max_tokens=16, messages=[{"role": "user", "content": "hello"}])
    assert message.role == "assistant" and message.content[0].type == "text" and message.content[0].text
    assert message.usage.input_tokens > 0 and 0 < message.usage.output_tokens <= 16
    with client.messages.stream(model=CHAT, max_tokens=12, messages=[{"role": "user", "content": "hi"}]) as stream:
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert streamed and final.usage.output_tokens > 0
    forced = client.messages.create(
        model=CHAT, max_tokens=64, messages=LATE, tool_choice={"type": "tool", "name": "get_weather"},
        tools=[{"name": "get_weather", "description": "weather for a city", "input_schema": CITY}])
    use = [block for block in forced.content if block.type == "tool_use"]
    assert use and use[0].name == "get_weather"
    jsonschema.validate(use[0].input, CITY)
    rows = _records(platform, key["id"], 3)
    assert len(rows) == 3 and all(r["prompt_tokens"] > 0 and r["completion_tokens"] > 0 for r in rows)
    assert rows[1]["stream"] and rows[1]["completion_tokens"] == final.usage.output_tokens
    bad = anthropic.Anthropic(base_url=platform.base_url, api_key="not-a-key", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as refused:
        bad.messages.create(model=CHAT, max_tokens=4, messages=[{"role": "user", "content": "hi"}])
    assert refused.value.body == {"error_code": "ModelArts.81003", "error_msg": "Invalid authorization header."}


class Weather(BaseModel):
    city: str


def test_langchain_tools_and_structured_output(platform, key):
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(model=CHAT, base_url=platform.base_url + "/v1", api_key=key["key"], max_tokens=64,
                     temperature=0, max_retries=0)
    weather = {"type": "function", "function": {"name": "get_weather", "description": "weather for a city",
                                                "parameters": {"type": "object", "required": ["city"],
                                                               "properties": {"city": {"type": "string"}}}}}
    message = llm.bind_tools([weather], tool_choice="get_weather").invoke(LATE[0]["content"])
    assert message.tool_calls and message.tool_calls[0]["name"] == "get_weather"
    assert set(message.tool_calls[0]["args"]) == {"city"}
    for method in ("json_schema", "function_calling"):
        result = llm.with_structured_output(Weather, method=method).invoke(LATE[0]["content"])
        assert isinstance(result, Weather) and isinstance(result.city, str), method


def test_moderation_and_limits_apply_to_responses_and_messages(platform, http):
    path = platform.home / "moderation_terms.txt"
    path.write_text("forbidden-topic-xyz\n")
    time.sleep(1.3)  # the gateway re-reads the file within a second of a change
    try:
        flagged = {"error_code": "ModelArts.81011", "error_msg": "May contain sensitive information, please try again."}
        asked = "tell me about FORBIDDEN-topic-xyz"
        for route, body in (("/v1/responses", {"model": CHAT, "input": asked, "max_output_tokens": 4}),
                            ("/v1/messages", {"model": CHAT, "max_tokens": 4,
                                              "messages": [{"role": "user", "content": asked}]})):
            answer = http.post(route, json=body)
            assert (answer.status_code, answer.json()) == (403, flagged), route
    finally:
        path.write_text("")
        time.sleep(1.3)
    nothing = http.post("/v1/messages", json={"model": CHAT, "max_tokens": 0, "messages": []})
    assert (nothing.status_code, nothing.json()) == (400, {
        "object": "error", "type": "BadRequestError", "param": None, "code": 400,
        "message": "[{'type': 'greater_than_equal', 'loc': ('body', 'max_tokens'), 'msg': 'Input should be greater "
                   "than or equal to 1', 'input': 0, 'ctx': {'ge': 1}}]"})
    unknown = http.post("/v1/responses", json={"model": "no-such-model", "input": "hi"})
    assert (unknown.status_code, unknown.json()) == (404, {
        "object": "error", "type": "NotFoundError", "param": None, "code": 404,
        "message": "The model `no-such-model` does not exist."})
