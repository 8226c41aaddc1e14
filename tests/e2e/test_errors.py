"""Error codes and bodies of spec §4.8.7, over raw HTTP, and that nothing reaches an engine without a key."""

from __future__ import annotations

import httpx
import pytest

CHAT_BODY = {"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
ROUTES = [("POST", "/v1/chat/completions", CHAT_BODY),
          ("POST", "/v1/completions", {"model": "tiny-chat", "prompt": "hi", "max_tokens": 2}),
          ("POST", "/v1/embeddings", {"model": "all-minilm-l6-v2", "input": "hi"}),
          ("POST", "/v1/rerank", {"model": "all-minilm-l6-v2", "query": "q", "documents": ["d"]}),
          ("GET", "/v1/models", None)]
NO_HEADER = {"error_code": "ModelArts.81002", "error_msg": "Failed to get the authorization header."}
BAD_KEY = {"error_code": "ModelArts.81003", "error_msg": "Invalid authorization header."}
TOO_LARGE = {"error_code": "MaaS.0413", "error_msg": "Request body too large: the limit is 8388608 bytes."}


@pytest.fixture(scope="module")
def raw(platform):
    return httpx.Client(base_url=platform.base_url, timeout=60)


@pytest.mark.parametrize("method,path,body", ROUTES)
def test_every_route_needs_a_valid_key(raw, method, path, body):
    for headers in ({}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer"}, {"Authorization": "sk-raw-key"}):
        response = raw.request(method, path, json=body, headers=headers)
        assert (response.status_code, response.json()) == (400, NO_HEADER)
    response = raw.request(method, path, json=body, headers={"Authorization": "Bearer sk-not-a-key"})
    assert (response.status_code, response.json()) == (401, BAD_KEY)


def test_a_bad_key_is_refused_before_the_body_is_judged(raw):
    response = raw.post("/v1/chat/completions", content=b"{not json", headers={
        "Authorization": "Bearer sk-not-a-key", "Content-Type": "application/json"})
    assert (response.status_code, response.json()) == (401, BAD_KEY)


def _openai_error(response, status: int) -> str:
    body = response.json()
    assert response.status_code == status, body
    assert set(body) == {"object", "message", "type", "param", "code"}
    assert body["object"] == "error" and body["param"] is None and body["code"] == status
    assert body["type"] == {400: "BadRequestError", 404: "NotFoundError"}[status]
    return body["message"]


def test_malformed_json(http):
    message = _openai_error(http.post("/v1/chat/completions", content=b'{"model": "tiny-chat" "x": 1}',
                                      headers={"Content-Type": "application/json"}), 400)
    assert "'type': 'json_invalid'" in message and "'msg': 'JSON decode error'" in message


def test_missing_body(http):
    message = _openai_error(http.post("/v1/chat/completions"), 400)
    assert message == "[{'type': 'missing', 'loc': ('body',), 'msg': 'Field required', 'input': None}]"


def test_missing_model(http):
    message = _openai_error(http.post("/v1/chat/completions", json={"messages": []}), 400)
    assert message.startswith("[{'type': 'missing', 'loc': ('body', 'model'), 'msg': 'Field required'")


def test_unknown_field(http):
    message = _openai_error(http.post("/v1/chat/completions", json=CHAT_BODY | {"test": 15}), 400)
    assert message == ("[{'type': 'extra_forbidden', 'loc': ('body', 'test'), 'msg': 'Extra inputs are not "
                       "permitted', 'input': 15}]")


@pytest.mark.parametrize("path,body", [
    ("/v1/chat/completions", CHAT_BODY | {"model": "Qwen2.5-72B-32K"}),
    ("/v1/embeddings", {"model": "Qwen2.5-72B-32K", "input": "x"}),
    ("/v1/rerank", {"model": "Qwen2.5-72B-32K", "query": "q", "documents": ["d"]})])
def test_unknown_model(http, path, body):
    assert _openai_error(http.post(path, json=body), 404) == "The model `Qwen2.5-72B-32K` does not exist."


def test_wrong_kind_of_model(http):
    message = _openai_error(http.post("/v1/embeddings", json={"model": "tiny-chat", "input": "x"}), 400)
    assert "does not support /v1/embeddings" in message


@pytest.mark.parametrize("max_tokens", [2040, 5000])
def test_prompt_plus_max_tokens_over_the_context(http, max_tokens):
    body = CHAT_BODY | {"messages": [{"role": "user", "content": "what is the color of the sky ?"}],
                        "max_tokens": max_tokens}
    message = _openai_error(http.post("/v1/chat/completions", json=body), 400)
    # The prompt's size counted independently: the engine's usage for the same messages, answered.
    answered = http.post("/v1/chat/completions", json=body | {"max_tokens": 1})
    assert answered.status_code == 200, answered.text
    prompt = answered.json()["usage"]["prompt_tokens"]
    assert prompt > 5
    assert message == (f"This model's maximum context length is 2048 tokens. However, you requested "
                       f"{prompt + max_tokens} tokens ({prompt} in the messages, {max_tokens} in the "
                       f"completion). Please reduce the length of the messages or completion.")


def test_context_rule_for_completions(http):
    body = {"model": "tiny-chat", "prompt": "the sky " * 10, "max_tokens": 2045}
    assert "maximum context length is 2048 tokens" in _openai_error(http.post("/v1/completions", json=body), 400)


def test_a_request_that_fits_is_not_refused(http):
    response = http.post("/v1/chat/completions", json=CHAT_BODY | {"max_tokens": 1000})
    assert response.status_code == 200, response.text


def test_wrong_method_and_unknown_path(http):
    response = http.get("/v1/chat/completions")
    assert (response.status_code, response.json()) == (405, {"detail": "Method Not Allowed"})
    for unknown in (http.get("/v1/no-such-route"), http.post("/v2/chat/completions", json=CHAT_BODY)):
        assert (unknown.status_code, unknown.json()) == (404, {"detail": "Not Found"})


def test_body_over_8_mb_is_refused(http):
    big = {"model": "tiny-chat", "messages": [{"role": "user", "content": "x" * (8 * 1024 * 1024 + 10)}]}
    response = http.post("/v1/chat/completions", json=big)
    assert (response.status_code, response.json()) == (413, TOO_LARGE)

    def chunks():  # no Content-Length: counted as it arrives
        yield b'{"model": "tiny-chat", "messages": [{"role": "user", "content": "'
        for _ in range(9):
            yield b"x" * (1024 * 1024)
        yield b'"}]}'

    response = http.post("/v1/chat/completions", content=chunks(), headers={"Content-Type": "application/json"})
    assert (response.status_code, response.json()) == (413, TOO_LARGE)
