"""Samples -> token ids and labels. SFT trains only on assistant tokens; pre-training on every token.

The chat template is the model's own (`tokenizer.apply_chat_template`), with the keyword arguments the served
model gets by default (`template_kwargs`, e.g. `{"enable_thinking": False}`). Assistant spans are found by
rendering the conversation up to each assistant turn: the text the template adds for that turn
(its content and end-of-turn marker) is what the model must learn to produce; the rest is labelled -100.

Train as served: some templates open the turn being generated differently from the same turn in the
history (Qwen3 with thinking off adds an empty `<think>\n\n</think>\n\n` to the generation prompt and drops
it from earlier turns). The last assistant turn is then preceded by the generation prompt exactly as the
serving engine renders it; otherwise a model is trained on prompts it never sees when called.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

IGNORE_INDEX = -100


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]

    @property
    def trained_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


def _render(tokenizer, messages: list[dict], add_generation_prompt: bool, tools: list | None = None,
            template_kwargs: dict | None = None) -> str:
    return tokenizer.apply_chat_template(messages, tools=tools, tokenize=False,
                                         add_generation_prompt=add_generation_prompt, **(template_kwargs or {}))


def parse_tools(tools: str | None) -> list | None:
    """ShareGPT's tool description, when it is a JSON list of tool schemas the template can render."""
    if not tools:
        return None
    try:
        parsed = json.loads(tools)
    except ValueError:
        return None
    return parsed if isinstance(parsed, list) and parsed else None


def assistant_spans(tokenizer, messages: list[dict], tools: list | None = None,
                    template_kwargs: dict | None = None) -> tuple[str, list[tuple[int, int]]]:
    """The conversation as the model sees it and the character spans of the assistant turns in it."""
    def render(upto: int, generation_prompt: bool = False) -> str:
        return _render(tokenizer, messages[:upto], generation_prompt, tools, template_kwargs)

    text = render(len(messages))
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before, prompt, end = render(i), render(i, generation_prompt=True), render(i + 1)
        if not (text.startswith(end) and end.startswith(before) and prompt.startswith(before)):
            raise ValueError("the chat template does not render conversations by appending turns; "
                             "assistant tokens cannot be located")
        # The turn's opening that history and generation prompt share ("<|im_start|>assistant\n").
        opening = os.path.commonprefix([prompt[len(before):], end[len(before):]])
        if i == len(messages) - 1 and len(prompt) > len(before) + len(opening):
            # The generation prompt opens the turn with more than the history shows: train on it as served.
            text = prompt + end[len(before) + len(opening):]
            spans.append((len(prompt), len(text)))
        else:
            spans.append((len(before) + len(opening), len(end)))
        if spans[-1][1] <= spans[-1][0]:
            raise ValueError("an assistant turn renders as nothing; assistant tokens cannot be located")
    return text, spans


def encode_conversation(tokenizer, messages: list[dict], max_seq_len: int, tools: list | None = None,
                        template_kwargs: dict | None = None) -> Encoded:
    text, spans = assistant_spans(tokenizer, messages, tools, template_kwargs)
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


def encode_samples(tokenizer, samples: list, kind: str, max_seq_len: int,
                   template_kwargs: dict | None = None) -> list[Encoded]:
    """Encode `train_jobs.datasets.Sample`s: `.messages` for kind "sft", `.text` for kind "pretrain"."""
    if kind == "pretrain":
        return [encode_document(tokenizer, s.text, max_seq_len) for s in samples]
    return [encode_conversation(tokenizer, s.messages, max_seq_len, parse_tools(s.tools), template_kwargs)
            for s in samples]
