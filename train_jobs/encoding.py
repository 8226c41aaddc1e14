"""Samples -> token ids and labels. SFT trains only on assistant tokens; pre-training on every token.

The chat template is the model's own (`tokenizer.apply_chat_template`). Assistant spans are found by
rendering the conversation up to each assistant turn: the text the template adds for that turn
(its content and end-of-turn marker) is what the model must learn to produce; the rest is labelled -100.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

IGNORE_INDEX = -100


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]

    @property
    def trained_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


def _render(tokenizer, messages: list[dict], add_generation_prompt: bool, tools: list | None = None) -> str:
    return tokenizer.apply_chat_template(messages, tools=tools, tokenize=False,
                                         add_generation_prompt=add_generation_prompt)


def parse_tools(tools: str | None) -> list | None:
    """ShareGPT's tool description, when it is a JSON list of tool schemas the template can render."""
    if not tools:
        return None
    try:
        parsed = json.loads(tools)
    except ValueError:
        return None
    return parsed if isinstance(parsed, list) and parsed else None


def assistant_spans(tokenizer, messages: list[dict], tools: list | None = None) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of the assistant turns in it."""
    text = _render(tokenizer, messages, add_generation_prompt=False, tools=tools)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start_text = _render(tokenizer, messages[:i], add_generation_prompt=True, tools=tools)
        end_text = _render(tokenizer, messages[: i + 1], add_generation_prompt=False, tools=tools)
        if not (text.startswith(start_text) and text.startswith(end_text) and len(end_text) > len(start_text)):
            raise ValueError("the chat template does not render conversations by appending turns; "
                             "assistant tokens cannot be located")
        spans.append((len(start_text), len(end_text)))
    return text, spans


def encode_conversation(tokenizer, messages: list[dict], max_seq_len: int, tools: list | None = None) -> Encoded:
    text, spans = assistant_spans(tokenizer, messages, tools)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    labels = []
    for token, (start, end) in zip(enc["input_ids"], enc["offset_mapping"]):
        inside = any(s <= start and end <= e for s, e in spans) and end > start
        labels.append(token if inside else IGNORE_INDEX)
    return Encoded(enc["input_ids"][:max_seq_len], labels[:max_seq_len])


def encode_document(tokenizer, text: str, max_seq_len: int) -> Encoded:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        ids = ids + [tokenizer.eos_token_id]
    ids = ids[:max_seq_len]
    return Encoded(ids, list(ids))


def encode_samples(tokenizer, samples: list, kind: str, max_seq_len: int) -> list[Encoded]:
    """Encode `train_jobs.datasets.Sample`s: `.messages` for kind "sft", `.text` for kind "pretrain"."""
    if kind == "pretrain":
        return [encode_document(tokenizer, s.text, max_seq_len) for s in samples]
    return [encode_conversation(tokenizer, s.messages, max_seq_len, parse_tools(s.tools)) for s in samples]
