"""`FinetuneConfig`: the one schema of a tuning job, shared by the control plane, YAML files and the entrypoint.

The rules are those of the product's job form (spec §7.1): job name, learning rate in [0, 0.1],
iterations 1~100000, checkpoint count 1~min(iterations, 10), auto-restart 1~128.
"""

from __future__ import annotations

import math
from enum import Enum
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from serve_apps.placement import NodeType, node_type_resources
from train_jobs.datasets.schema import DatasetLimits

MAX_ITERATIONS = 100_000
MAX_CHECKPOINTS = 10
JOB_NAME_PATTERN = r"^[A-Za-z\u4e00-\u9fff][A-Za-z0-9\u4e00-\u9fff_-]{0,63}$"


class JobType(str, Enum):
    FULL = "full"
    LORA = "lora"
    PRETRAIN = "pretrain"


class DatasetFormat(str, Enum):
    ALPACA = "alpaca"
    SHAREGPT = "sharegpt"
    MOSS = "moss"
    CSV = "csv"
    XLSX = "xlsx"


class Backend(str, Enum):
    GLOO = "gloo"
    NCCL = "nccl"
    HCCL = "hccl"


class LoraSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    r: int = Field(8, ge=1, le=256, description="Rank of the low-rank update.")
    alpha: int = Field(16, ge=1, description="Scaling numerator: the update is scaled by alpha / r.")
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(
        # Every linear layer: on tiny-chat, attention-only adapters plateau at loss ~0.4 where these reach 0.03.
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], min_length=1,
        description="Names of the linear layers that get adapters.")


class FinetuneConfig(BaseModel):
    """A fine-tuning or continued pre-training job."""

    model_config = ConfigDict(extra="forbid", use_enum_values=False)

    name: str = Field(pattern=JOB_NAME_PATTERN, description="Job name; also the Ray Train run name.")
    job_type: JobType
    base_model_path: Path = Field(description="A local Hugging Face model directory (weights + tokenizer).")
    dataset_path: Path
    dataset_format: DatasetFormat = DatasetFormat.ALPACA
    output_dir: Path = Field(description="Checkpoints, metrics.jsonl, status.json, loss.png and the final model.")
    resume: bool = Field(False, description="Continue from the latest checkpoint in output_dir (the 'continue' "
                                             "action). Without it an output_dir holding checkpoints is refused.")
    data_count: int | None = Field(None, ge=1, description="Samples in the dataset, when known before reading it; "
                                                           "the iteration rule is then checked at once.")
    dataset_max_rows: int = Field(DatasetLimits().max_rows, ge=1,
                                  description="The most rows (lines) the dataset may have (the platform's "
                                              "MAAS_DATASET_MAX_ROWS).")

    epochs: int = Field(1, ge=1, le=1000)
    learning_rate: float = Field(2e-5, ge=0.0, le=0.1)
    lr_scheduler: Literal["constant", "linear", "cosine"] = "cosine"
    warmup_ratio: float = Field(0.0, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    max_grad_norm: float | None = Field(1.0, gt=0.0)
    global_batch_size: int = Field(32, ge=1, description="Samples per iteration, over all workers.")
    micro_batch_size: int | None = Field(None, ge=1, description="Samples per forward pass on one worker; "
                                                                 "the rest of a worker's share is accumulated.")
    max_seq_len: int = Field(1024, ge=8)
    chat_template_kwargs: dict[str, Any] = Field(
        {}, description='Chat template arguments the served model gets by default, e.g. {"enable_thinking": '
                        'false}: conversations are rendered for training exactly as the engine renders them.')
    seed: int = 42

    checkpoints_to_keep: int = Field(1, ge=1, le=MAX_CHECKPOINTS)
    checkpoint_every: int | None = Field(None, ge=1, description="Steps between checkpoints; default: spread "
                                                                 "checkpoints_to_keep evenly. The last step "
                                                                 "always checkpoints.")
    max_failures: int = Field(3, ge=1, le=128, description="Automatic restarts from the latest checkpoint.")

    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    resources_per_worker: dict[str, float] | None = Field(
        None, description='Ray resources of one worker, e.g. {"CPU": 4, "NPU": 1} on Ascend.')
    node_type: NodeType = Field(None, description="Run the workers only on nodes with this custom Ray resource "
                                                  "(each takes 0.01 of it). None: any node.")
    spread_workers: bool = Field(False, description="One worker per node where the cluster allows (Ray's SPREAD); "
                                                    "default: packed onto as few nodes as possible.")
    backend: Backend | None = Field(None, description="Collective backend; default gloo on CPU, nccl on CUDA, "
                                                      "hccl when workers ask for the NPU resource.")

    deepspeed: int | None = Field(None, ge=0, le=3, description="ZeRO stage, or null for plain DDP.")
    lora: LoraSettings = LoraSettings()
    merge_lora: bool = Field(False, description="Also write the base model with the adapter merged in.")

    @property
    def uses_npu(self) -> bool:
        return bool(self.resources_per_worker and self.resources_per_worker.get("NPU"))

    @property
    def worker_resources(self) -> dict[str, float] | None:
        """What Ray Train gives each worker: resources_per_worker (Ray Train's default when unset) plus the node
        type's share."""
        if not self.node_type:
            return self.resources_per_worker
        base = self.resources_per_worker or ({"GPU": 1} if self.use_gpu else {"CPU": 1})
        return base | node_type_resources(self.node_type)

    @property
    def collective_backend(self) -> Backend:
        if self.backend is not None:
            return self.backend
        if self.uses_npu:
            return Backend.HCCL
        return Backend.NCCL if self.use_gpu else Backend.GLOO

    @property
    def dataset_kind(self) -> str:
        return "pretrain" if self.job_type is JobType.PRETRAIN else "sft"

    @property
    def run_dir(self) -> Path:
        """Where Ray Train keeps this job's checkpoints."""
        return self.output_dir / self.name

    def iterations(self, data_count: int) -> int:
        """Optimizer steps of the whole job: each one consumes `global_batch_size` samples."""
        steps = math.ceil(data_count * self.epochs / self.global_batch_size)
        if not 1 <= steps <= MAX_ITERATIONS:
            raise ValueError(f"iterations = ceil({data_count} samples x {self.epochs} epochs / "
                             f"{self.global_batch_size} per step) = {steps}, must be 1~{MAX_ITERATIONS}")
        if self.checkpoints_to_keep > min(steps, MAX_CHECKPOINTS):
            raise ValueError(f"checkpoints_to_keep = {self.checkpoints_to_keep}, must be 1~{min(steps, MAX_CHECKPOINTS)}"
                             f" (at most the {steps} iterations, never more than {MAX_CHECKPOINTS})")
        return steps

    def checkpoint_interval(self, total_steps: int) -> int:
        return self.checkpoint_every or max(1, total_steps // self.checkpoints_to_keep)

    def with_data_count(self, data_count: int) -> "FinetuneConfig":
        """This config with the dataset's sample count, validated again (iteration and checkpoint rules)."""
        return FinetuneConfig.model_validate(self.model_dump() | {"data_count": data_count})

    @model_validator(mode="after")
    def _check_rules(self) -> "FinetuneConfig":
        if self.deepspeed is not None and self.job_type is not JobType.FULL:
            raise ValueError("deepspeed (ZeRO) is supported for full fine-tuning only")
        if self.merge_lora and self.job_type is not JobType.LORA:
            raise ValueError("merge_lora applies to LoRA jobs only")
        if self.global_batch_size % self.num_workers:
            raise ValueError(f"global_batch_size {self.global_batch_size} must be a multiple of "
                             f"num_workers {self.num_workers}")
        if self.micro_batch_size and (self.global_batch_size // self.num_workers) % self.micro_batch_size:
            raise ValueError(f"micro_batch_size {self.micro_batch_size} must divide the per-worker batch "
                             f"{self.global_batch_size // self.num_workers}")
        if self.use_gpu and self.uses_npu:
            raise ValueError("use_gpu (CUDA) and the NPU resource exclude each other")
        if self.backend is Backend.NCCL and not self.use_gpu:
            raise ValueError("the nccl backend needs use_gpu: true")
        if self.backend is Backend.HCCL and not self.uses_npu:
            raise ValueError('the hccl backend needs resources_per_worker with "NPU"')
        if self.data_count is not None:
            self.iterations(self.data_count)
        return self

    @classmethod
    def from_yaml(cls, path: str | Path) -> "FinetuneConfig":
        return cls.model_validate(yaml.safe_load(Path(path).read_text()) or {})

    def to_yaml(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True))
