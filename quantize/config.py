"""`CompressConfig`: the one schema of a compression job, shared by the control plane, YAML files and the
entrypoint (`python -m quantize.compress --config job.yaml`). Importable without llmcompressor or torch: the
control plane validates a job with it before any compute.

Strategies (spec §6.2; the product offers the first two):
- `smoothquant-w8a8`: SmoothQuant moves activation outliers into the weights (migration strength 0-1, the
  product's form field, default 0.5), then GPTQ quantizes weights and activations to int8 (W8A8).
- `awq-w4a16`: activation-aware scaling (AWQ), then 4-bit asymmetric weights in groups of 128 (W4A16).
- `gptq-w4a16`: GPTQ alone, 4-bit symmetric weights in groups of 128.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from train_jobs.datasets.schema import DatasetLimits

JOB_NAME_PATTERN = r"^[A-Za-z\u4e00-\u9fff][A-Za-z0-9\u4e00-\u9fff_-]{0,63}$"
GROUP_SIZE = 128  # weight groups of the W4A16 strategies


class Strategy(str, Enum):
    SMOOTHQUANT_W8A8 = "smoothquant-w8a8"
    AWQ_W4A16 = "awq-w4a16"
    GPTQ_W4A16 = "gptq-w4a16"

    @property
    def scheme(self) -> str:
        """The compressed-tensors preset scheme the weights end in."""
        return {"smoothquant-w8a8": "W8A8", "awq-w4a16": "W4A16_ASYM", "gptq-w4a16": "W4A16"}[self.value]

    @property
    def weight_bits(self) -> int:
        return 8 if self is Strategy.SMOOTHQUANT_W8A8 else 4


# Architectures whose decoder layers llmcompressor traces and vLLM serves quantized (CPU and CUDA kernels).
SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "MistralForCausalLM")


class CompressConfig(BaseModel):
    """A compression job: which weights, which strategy, which calibration data, where the result goes."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=JOB_NAME_PATTERN, description="Job name (1-64: a letter first, then letters, "
                                                            "digits, - or _).")
    strategy: Strategy
    base_model_path: Path = Field(description="A local Hugging Face model directory (weights + tokenizer).")
    output_dir: Path = Field(description="status.json, job.yaml and the compressed model (output_dir/model).")
    migration_strength: float = Field(0.5, ge=0.0, le=1.0, description="SmoothQuant only: how much of the "
                                                                          "activations' scale moves into weights.")
    dataset_path: Path | None = Field(None, description="Calibration data in a fine-tuning format; default: the "
                                                        "built-in calibration set (quantize/data).")
    dataset_format: str = Field("alpaca", description="moss, alpaca, sharegpt, csv or xlsx")
    dataset_max_rows: int = Field(DatasetLimits().max_rows, ge=1,
                                  description="The most rows (lines) the calibration dataset may have (the platform's "
                                              "MAAS_DATASET_MAX_ROWS).")
    num_samples: int = Field(64, ge=1, le=4096, description="Calibration samples.")
    max_seq_len: int = Field(512, ge=16, le=32768, description="Calibration sequence length (tokens).")
    chat_template_kwargs: dict[str, Any] = Field({}, description="Rendered as the served model renders prompts.")
    seed: int = 42

    @model_validator(mode="after")
    def _strength(self) -> "CompressConfig":
        if self.strategy is not Strategy.SMOOTHQUANT_W8A8 and "migration_strength" in self.model_fields_set \
                and self.migration_strength != 0.5:
            raise ValueError("migration_strength applies to smoothquant-w8a8 only")
        return self

    @property
    def model_dir(self) -> Path:
        return self.output_dir / "model"

    @classmethod
    def from_yaml(cls, path: str | Path) -> "CompressConfig":
        return cls.model_validate(yaml.safe_load(Path(path).read_text()) or {})

    def to_yaml(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True))


def compressibility(config: dict, strategy: Strategy) -> str | None:
    """Why a model (its config.json) cannot be compressed with `strategy`, or None when it can. Checked
    before any compute, by the control plane and by the entrypoint."""
    architectures = config.get("architectures") or []
    if not any(a in SUPPORTED_ARCHITECTURES for a in architectures):
        return (f"{'/'.join(architectures) or 'this architecture'} cannot be compressed: supported are decoder "
                f"language models ({', '.join(SUPPORTED_ARCHITECTURES)})")
    if config.get("quantization_config"):
        method = config["quantization_config"].get("quant_method", "quantized")
        return f"the model is already compressed ({method}); compress the original"
    if strategy.weight_bits == 4:
        sizes = {"hidden_size": config.get("hidden_size"), "intermediate_size": config.get("intermediate_size")}
        bad = {k: v for k, v in sizes.items() if not isinstance(v, int) or v % GROUP_SIZE}
        if bad:
            return (f"{strategy.value} quantizes weights in groups of {GROUP_SIZE}; "
                    + ", ".join(f"{k} = {v}" for k, v in bad.items()) + f" is not a multiple of {GROUP_SIZE}")
    return None
