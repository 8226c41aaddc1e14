"""Content moderation on input and output (built-in term list, re-read from $MAAS_HOME/moderation_terms.txt)."""

from __future__ import annotations

import json
import time

import pytest

CHAT = "tiny-chat"
FLAGGED = {"error_code": "ModelArts.81011", "error_msg": "May contain sensitive information, please try again."}
QUESTION = [{"role": "user", "content": "what color is the grass ?"}]


@pytest.fixture
def terms(platform):
    path = platform.home / "moderation_terms.txt"

    def set_terms(*words: str) -> None:
        path.write_text("\n".join(words) + "\n")
        time.sleep(1.3)  # the gateway re-reads the file within a second of a change

    yield set_terms
    set_terms()


def test_flagged_input_is_refused_before_the_engine(http, terms):
    terms("forbidden-topic-xyz")
    chat = http.post("/v1/chat/completions", json={"model": CHAT, "max_tokens": 4, "messages": [
        {"role": "user", "content": "Tell me about FORBIDDEN-topic-xyz please"}]})
    assert (chat.status_code, chat.json()) == (403, FLAGGED)
    completion = http.post("/v1/completions", json={"model": CHAT, "max_tokens": 4,
                                                    "prompt": "forbidden-topic-xyz is"})
    assert (completion.status_code, completion.json()) == (403, FLAGGED)
    assert http.post("/v1/chat/completions", json={"model": CHAT, "max_tokens": 4, "messages": QUESTION}
                     ).status_code == 200


def test_flagged_output_non_stream_and_stream(http, terms):
    body = {"model": CHAT, "max_tokens": 12, "temperature": 0, "messages": QUESTION}
    first = http.post("/v1/chat/completions", json=body)
    assert first.status_code == 200
    asked = set(QUESTION[0]["content"].split())
    words = [w for w in first.json()["choices"][0]["message"]["content"].split() if w.isalpha() and w not in asked]
    assert words, first.json()
    term = words[-1]  # a word the model says (temperature 0: it says it again), absent from the question
    terms(term)
    again = http.post("/v1/chat/completions", json=body)
    assert (again.status_code, again.json()) == (403, FLAGGED)
    with http.stream("POST", "/v1/chat/completions", json=body | {"stream": True}) as stream:
        lines = [line for line in stream.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    last = json.loads(lines[-2][6:])
    assert last["choices"][0]["finish_reason"] == "content_filter"
    sent = "".join((json.loads(l[6:])["choices"] or [{}])[0].get("delta", {}).get("content") or ""
                   for l in lines[:-2])
    assert term not in sent.lower()
