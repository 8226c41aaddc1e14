"""The training methods: what model is trained, which weights a checkpoint holds, what the job delivers.

- full fine-tuning: every weight; checkpoints and the result are Hugging Face model directories.
- LoRA: a PEFT adapter on the frozen base; checkpoints hold the adapter, the result is the adapter and,
  with `merge_lora`, the merged model.
- continued pre-training: full weights, trained on plain text (the data side differs, see encoding.py).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from train_jobs.config import FinetuneConfig, JobType

MODEL_DIR = "model"
ADAPTER_DIR = "adapter"


def load_tokenizer(config: FinetuneConfig):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(config.base_model_path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


class FullFinetune:
    """Train all weights of the base model."""

    weights_dir = MODEL_DIR

    def build_model(self, config: FinetuneConfig, checkpoint_dir: Path | None):
        import torch
        from transformers import AutoModelForCausalLM

        source = checkpoint_dir / MODEL_DIR if checkpoint_dir else config.base_model_path
        return AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)

    def save_weights(self, model, tokenizer, directory: Path) -> None:
        model.save_pretrained(directory / MODEL_DIR, safe_serialization=True)
        tokenizer.save_pretrained(directory / MODEL_DIR)

    def export(self, config: FinetuneConfig, checkpoint_dir: Path) -> dict[str, str]:
        target = config.output_dir / MODEL_DIR
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(checkpoint_dir / MODEL_DIR, target)
        return {"model": str(target)}


class ContinuedPretraining(FullFinetune):
    """Full weights on raw text: every token is a target."""


class LoraFinetune:
    """Train a low-rank adapter; the base weights stay frozen."""

    weights_dir = ADAPTER_DIR

    def build_model(self, config: FinetuneConfig, checkpoint_dir: Path | None):
        import torch
        from peft import LoraConfig, PeftModel, get_peft_model
        from transformers import AutoModelForCausalLM

        base = AutoModelForCausalLM.from_pretrained(config.base_model_path, dtype=torch.float32)
        if checkpoint_dir:
            return PeftModel.from_pretrained(base, checkpoint_dir / ADAPTER_DIR, is_trainable=True)
        lora = LoraConfig(r=config.lora.r, lora_alpha=config.lora.alpha, lora_dropout=config.lora.dropout,
                          target_modules=config.lora.target_modules, task_type="CAUSAL_LM")
        return get_peft_model(base, lora)

    def save_weights(self, model, tokenizer, directory: Path) -> None:
        model.save_pretrained(directory / ADAPTER_DIR)

    def export(self, config: FinetuneConfig, checkpoint_dir: Path) -> dict[str, str]:
        target = config.output_dir / ADAPTER_DIR
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(checkpoint_dir / ADAPTER_DIR, target)
        outputs = {"adapter": str(target)}
        if config.merge_lora:
            outputs["model"] = str(merge_adapter(config, target))
        return outputs


def merge_adapter(config: FinetuneConfig, adapter_dir: Path) -> Path:
    """Fold the adapter into the base weights and save a plain Hugging Face model."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(config.base_model_path, dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    target = config.output_dir / MODEL_DIR
    shutil.rmtree(target, ignore_errors=True)
    merged.save_pretrained(target, safe_serialization=True)
    load_tokenizer(config).save_pretrained(target)
    return target


RECIPES = {JobType.FULL: FullFinetune, JobType.LORA: LoraFinetune, JobType.PRETRAIN: ContinuedPretraining}


def recipe_for(config: FinetuneConfig):
    return RECIPES[config.job_type]()
