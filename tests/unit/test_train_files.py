"""What a fine-tune reads and leaves, without Ray or an engine: a checkpoint counts only when every rank's
files are there in full; status.json keeps what two writing processes put in it; conversations are encoded
exactly as the serving engine renders them (train as served)."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import torch

from train_jobs import checkpointing
from train_jobs.progress import read_status, update_status


def _checkpoint(root: Path, world_size: int = 2) -> Path:
    """What Ray Train's merge of the ranks' directories looks like: every rank saved into its own directory."""
    merged = root / checkpointing.checkpoint_name(40)
    merged.mkdir()
    for rank in range(world_size):
        directory = root / f"rank{rank}"
        directory.mkdir()
        if rank == 0:
            (directory / "model").mkdir()
            torch.save({"w": torch.ones(1000)}, directory / "model" / "weights.pt")
        state = {"step": 40, "world_size": world_size}
        checkpointing.save(directory, rank=rank, train_state=state)
        for path in directory.rglob("*"):
            if path.is_file():
                target = merged / path.relative_to(directory)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(path.read_bytes())
    return merged


def test_a_checkpoint_is_complete_only_with_every_file_in_full(tmp_path):
    merged = _checkpoint(tmp_path)
    assert checkpointing.is_complete(merged, "model")
    assert checkpointing.latest(tmp_path, "model") == merged
    assert checkpointing.step_of(merged) == 40

    weights = merged / "model" / "weights.pt"
    full = weights.read_bytes()
    weights.write_bytes(full[: len(full) // 2])  # a copy cut off half-way
    assert not checkpointing.is_complete(merged, "model")
    assert checkpointing.latest(tmp_path, "model") is None
    weights.write_bytes(full)
    assert checkpointing.is_complete(merged, "model")

    (merged / "files_rank1.json").unlink()  # rank 1's share never arrived
    assert not checkpointing.is_complete(merged, "model")


def test_a_checkpoint_missing_a_listed_file_or_with_a_cut_list_is_incomplete(tmp_path):
    merged = _checkpoint(tmp_path)
    (merged / "rng_rank1.pt").unlink()
    assert not checkpointing.is_complete(merged, "model")
    again = tmp_path / "again"
    again.mkdir()
    merged = _checkpoint(again)
    listing = merged / "files_rank0.json"
    listing.write_text(listing.read_text()[:10])  # the list itself cut off
    assert not checkpointing.is_complete(merged, "model")


def test_checkpoints_from_before_file_lists_still_resume(tmp_path):
    old = tmp_path / checkpointing.checkpoint_name(10)
    (old / "model").mkdir(parents=True)
    (old / checkpointing.TRAIN_STATE).write_text(json.dumps({"step": 10, "world_size": 1}))
    torch.save(checkpointing.rng_state(), old / "rng_rank0.pt")
    assert checkpointing.is_complete(old, "model")
    (old / "rng_rank0.pt").unlink()
    assert not checkpointing.is_complete(old, "model")


def _writer(output_dir: str, prefix: str, n: int) -> None:
    for i in range(n):
        update_status(Path(output_dir), **{f"{prefix}{i}": i})


def test_status_keeps_what_two_processes_write_at_once(tmp_path):
    """The driver (phases, stop) and rank 0 (progress) update status.json at the same time: no update of
    either may be lost."""
    n = 150
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_writer, args=(str(tmp_path), prefix, n)) for prefix in ("driver", "rank")]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(60)
        assert writer.exitcode == 0
    status = read_status(tmp_path)
    assert {f"driver{i}" for i in range(n)} | {f"rank{i}" for i in range(n)} <= set(status)


def _chat_tokenizer():
    """A small byte-level tokenizer with tiny-chat's chat template (Qwen3-style thinking switch)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from serve_apps.tiny_chat import CHAT_TEMPLATE

    inner = Tokenizer(models.BPE())
    inner.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    inner.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
    inner.train_from_iterator(["what is the color of the sea ? the sea is blue . and the sky ?"],
                              trainers.BpeTrainer(vocab_size=300, special_tokens=specials,
                                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=inner, eos_token="<|im_end|>", pad_token="<pad>")
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def test_conversations_are_trained_as_the_engine_renders_them():
    """With thinking off (the served default), the engine's prompt ends with an empty think block that the
    template leaves out of history turns: the last assistant turn is trained after exactly that prompt."""
    from train_jobs.encoding import IGNORE_INDEX, encode_conversation

    tokenizer = _chat_tokenizer()
    one = [{"role": "user", "content": "what is the color of the sea ?"},
           {"role": "assistant", "content": "the sea is blue ."}]
    two = one + [{"role": "user", "content": "and the sky ?"}, {"role": "assistant", "content": "blue ."}]
    served = {"enable_thinking": False}
    for messages in (one, two):
        encoded = encode_conversation(tokenizer, messages, 1024, template_kwargs=served)
        text = tokenizer.decode(encoded.input_ids)
        prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True, **served)
        assert prompt.endswith("<think>\n\n</think>\n\n")
        assert text == prompt + messages[-1]["content"] + "<|im_end|>\n"  # what the engine sees, then the answer
        trained = tokenizer.decode([t for t in encoded.labels if t != IGNORE_INDEX])
        assert trained == "".join(m["content"] + "<|im_end|>\n" for m in messages if m["role"] == "assistant")
    # The template's own default (thinking on) has no such block: nothing is added.
    plain = encode_conversation(tokenizer, one, 1024)
    assert "<think>" not in tokenizer.decode(plain.input_ids)


def test_the_control_plane_trains_with_the_served_template_arguments():
    from cluster.finetune.service import template_kwargs

    assert template_kwargs("tiny-chat") == {"enable_thinking": False}  # the gateway's default for callers
    assert template_kwargs("all-minilm-l6-v2") == {}
