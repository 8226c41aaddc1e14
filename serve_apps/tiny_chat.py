"""Build `tiny-chat`, the platform's own small chat model, offline and deterministically.

No model hub is reachable, so the project makes its default chat model itself: a byte-level BPE
tokenizer trained with `tokenizers` on a generated corpus, a 2-layer Llama, and a short training run on
generated dialogues so that it answers in the chat format, can think (`<think>...</think>`) and stops
with `<|im_end|>`. Same code + same torch build -> same weights.

Run: `python -m serve_apps.tiny_chat OUTPUT_DIR`.
"""

from __future__ import annotations

import json
import random
import shutil
import sys
import time
from pathlib import Path

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>",
                  "<tool_call>", "</tool_call>"]
BUILD_VERSION = 2  # bump when the recipe changes so `ensure_built` rebuilds old directories
CONTEXT_LENGTH = 2048
TRAIN_STEPS = 400

# A Qwen3-style ChatML template: tools in the system turn, `enable_thinking` toggles reasoning.
CHAT_TEMPLATE = """{%- if tools %}<|im_start|>system
{% if messages[0].role == 'system' %}{{ messages[0].content }}

{% endif %}You may call one or more functions. Function signatures are inside <tools></tools>:
<tools>{% for tool in tools %}
{{ tool | tojson }}{% endfor %}
</tools>
Return a call as <tool_call>{"name": <function-name>, "arguments": <args-json-object>}</tool_call><|im_end|>
{% elif messages[0].role == 'system' %}<|im_start|>system
{{ messages[0].content }}<|im_end|>
{% endif %}
{%- for message in messages %}
{%- if message.role == 'user' %}<|im_start|>user
{{ message.content }}<|im_end|>
{% elif message.role == 'assistant' %}<|im_start|>assistant
{% if message.content %}{{ message.content }}{% endif %}
{%- if message.tool_calls %}{% for call in message.tool_calls %}
<tool_call>{"name": "{{ call.function.name }}", "arguments": {{ call.function.arguments if call.function.arguments is string else call.function.arguments | tojson }}}</tool_call>{% endfor %}{% endif %}<|im_end|>
{% elif message.role == 'tool' %}<|im_start|>user
<tool_response>
{{ message.content }}
</tool_response><|im_end|>
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% if enable_thinking is defined and enable_thinking is false %}<think>

</think>

{% endif %}{% endif %}"""

_COLORS = ["red", "blue", "green", "yellow", "black", "white", "orange", "purple"]
_THINGS = ["sky", "grass", "sun", "snow", "coal", "orange", "plum", "sea", "leaf", "rose", "milk",
           "night", "lemon", "cloud", "grape", "fire"]
_WORDS = ("the a an of to and in is it you that he was for on are with as his they be at one have "
          "this from or had by word but what some we can out other were all there when up use your "
          "how said each she which do their time if will way about many then them write would like "
          "so these her long make thing see him two has look more day could go come did number sound "
          "no most people my over know water than call first who may down side been now find any new "
          "work part take get place made live where after back little only round man year came show "
          "every good me give our under name very through just form sentence great think say help low "
          "line differ turn cause much mean before move right boy old too same tell does set three "
          "want air well also play small end put home read hand port large spell add even land here "
          "must big high such follow act why ask men change went light kind off need house picture try "
          "us again animal point mother world near build self earth father model service ray serve "
          "token stream train cluster key limit quota").split()


def _color_of(thing: str) -> str:
    return _COLORS[sum(map(ord, thing)) % len(_COLORS)]


def _sentence(rng: random.Random) -> str:
    words = [rng.choice(_WORDS) for _ in range(rng.randint(4, 12))]
    return " ".join(words) + rng.choice([" .", " ?", " !", " ,"])


_TOOLS = {
    "get_weather": ("city", ["paris", "tokyo", "lima", "oslo", "cairo", "delhi"]),
    "get_delivery_date": ("order_id", ["A1024", "B77", "C3141", "D9", "E2718"]),
    "search": ("query", ["red roses", "blue sea", "green grass", "ray serve"]),
}


def _tool_schema(name: str) -> dict:
    arg = _TOOLS[name][0]
    return {"type": "function", "function": {
        "name": name, "description": f"{name.replace('_', ' ')} for a {arg.replace('_', ' ')} .",
        "parameters": {"type": "object", "properties": {arg: {"type": "string"}}, "required": [arg]}}}


def _conversation(rng: random.Random) -> tuple[list[dict], list[dict] | None, bool, str]:
    """(messages, tools, thinking, the assistant's reply) for one training sample."""
    thing = rng.choice(_THINGS)
    messages = [{"role": "system", "content": _sentence(rng)}] if rng.random() < 0.3 else []
    tools = None
    if rng.random() < 0.25:
        names = rng.sample(sorted(_TOOLS), rng.randint(1, 3))
        tools = [_tool_schema(n) for n in names]
        name = rng.choice(names)
        arg, values = _TOOLS[name]
        value = rng.choice(values)
        messages.append({"role": "user", "content": f"please {name.replace('_', ' ')} for {value} ."})
        reply = f'<tool_call>{{"name": "{name}", "arguments": {{"{arg}": "{value}"}}}}</tool_call>'
    elif rng.random() < 0.5:
        messages.append({"role": "user", "content": f"what is the color of the {thing} ?"})
        reply = f"the {thing} is {_color_of(thing)} ."
    else:
        messages.append({"role": "user", "content": _sentence(rng)})
        reply = _sentence(rng)
    thinking = rng.random() < 0.8  # mostly thinking: with thinking on, the model opens <think> itself
    if thinking:
        reply = f"<think>\nlet me think about the {thing} . {_sentence(rng)}\n</think>\n\n{reply}"
    return messages, tools, thinking, reply


def _train_tokenizer(rng: random.Random):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    corpus = [_sentence(rng) for _ in range(20000)] + [_conversation(rng)[3] for _ in range(2000)]
    corpus += [CHAT_TEMPLATE] * 50
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=4096, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer=trainer)
    return tok


def build(output_dir: str | Path) -> Path:
    """Build tiny-chat into `output_dir` (replaced if present) and return the path."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = Path(output_dir)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    rng = random.Random(0)
    torch.manual_seed(0)
    torch.set_num_threads(2)  # a fixed thread count keeps the float math, and so the weights, reproducible

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_train_tokenizer(rng), bos_token=None, eos_token="<|im_end|>",
        pad_token="<|endoftext|>", unk_token=None, additional_special_tokens=SPECIAL_TOKENS[3:],
        model_max_length=CONTEXT_LENGTH)
    tokenizer.chat_template = CHAT_TEMPLATE

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=384, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=CONTEXT_LENGTH,
        rms_norm_eps=1e-6, tie_word_embeddings=True, torch_dtype="float32",
        bos_token_id=None, eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(config)
    _train(model, tokenizer, rng)

    model.generation_config.eos_token_id = [config.eos_token_id, tokenizer.pad_token_id]
    model.generation_config.do_sample = True
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / "maas_build.json").write_text(json.dumps(
        {"name": "tiny-chat", "build_version": BUILD_VERSION, "created": int(time.time())}))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def _train(model, tokenizer, rng: random.Random) -> None:
    import torch

    samples = []
    for _ in range(4000):
        messages, tools, thinking, reply = _conversation(rng)
        prompt = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True,
                                               enable_thinking=thinking)
        samples.append(tokenizer(prompt + reply + "<|im_end|>\n")["input_ids"][-160:])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    model.train()
    for step in range(TRAIN_STEPS):
        batch = [samples[(step * 32 + i) % len(samples)] for i in range(32)]
        width = max(map(len, batch))
        ids = torch.full((len(batch), width), tokenizer.pad_token_id)
        labels = torch.full((len(batch), width), -100)
        for row, seq in enumerate(batch):
            ids[row, : len(seq)] = torch.tensor(seq)
            labels[row, : len(seq)] = torch.tensor(seq)
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    print(f"tiny-chat: final training loss {loss.item():.3f}")


def is_built(path: str | Path) -> bool:
    meta = Path(path) / "maas_build.json"
    try:
        return json.loads(meta.read_text()).get("build_version") == BUILD_VERSION
    except (OSError, ValueError):
        return False


if __name__ == "__main__":
    start = time.time()
    target = build(sys.argv[1] if len(sys.argv) > 1 else "tiny-chat")
    print(f"built {target} in {time.time() - start:.1f}s")
