"""The fine-tuning entrypoint as a Ray Job on the tests' real cluster (no control plane): a LoRA run submitted
with `ray job submit`, stop + continue and an automatic restart after a killed Ray Train worker (both resume
at checkpoint + 1 with exactly the losses of an uninterrupted run), and DeepSpeed ZeRO-2 full fine-tuning
with 2 workers on CPU whose exported model loads in transformers."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest
import torch
import yaml
from peft import PeftModel
from transformers import AutoModelForCausalLM

from serve_apps.tiny_chat import _COLORS, _THINGS, _color_of
from tests.helpers import BIN, DASHBOARD_PORT, RAY_TEMP_DIR
from train_jobs import checkpointing, finetune
from train_jobs.config import FinetuneConfig
from train_jobs.progress import read_metrics, read_status

DASHBOARD = f"http://127.0.0.1:{DASHBOARD_PORT}"
JOB_ENV = {"env_vars": {"TOKENIZERS_PARALLELISM": "false"}}
TOTAL, EVERY = 20, 4  # 16 samples x 5 epochs / 4 per step; a checkpoint every 4 steps


@pytest.fixture(scope="module")
def jobs(platform):
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(DASHBOARD)


@pytest.fixture(scope="module")
def base_model(platform) -> Path:
    path = platform.home / "models" / "tiny-chat"
    assert (path / "config.json").is_file(), path
    return path


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """Each thing gets another color than the one tiny-chat says (alpaca rows)."""
    path = tmp_path_factory.mktemp("ft-data") / "colors.jsonl"
    rows = [{"instruction": f"what is the color of the {t} ?",
             "output": f"the {t} is {_COLORS[(_COLORS.index(_color_of(t)) + 3) % len(_COLORS)]} ."} for t in _THINGS]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _lora_job(base_model: Path, dataset: Path, output_dir: Path, **changes) -> dict:
    # Dropout on, warmup then cosine: an exact resume needs the RNG, the data position and the scheduler back.
    return {"name": "colors", "job_type": "lora", "base_model_path": str(base_model), "dataset_path": str(dataset),
            "output_dir": str(output_dir), "epochs": 5, "learning_rate": 0.005, "warmup_ratio": 0.25,
            "global_batch_size": 4, "max_seq_len": 64, "seed": 7, "checkpoint_every": EVERY,
            "checkpoints_to_keep": 5, "max_failures": 1} | changes


def _write(config: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def _submit(jobs, config_path: Path) -> str:
    submission_id = f"ft-{uuid.uuid4().hex[:10]}"
    jobs.submit_job(entrypoint=f"{sys.executable} -m train_jobs.finetune --config {config_path}",
                    submission_id=submission_id, runtime_env=JOB_ENV)
    return submission_id


def _wait(jobs, submission_id: str, timeout: float = 240) -> str:
    deadline = time.time() + timeout
    while (status := jobs.get_job_status(submission_id).value) not in ("SUCCEEDED", "FAILED", "STOPPED"):
        assert time.time() < deadline, f"{submission_id} still {status}:\n{jobs.get_job_logs(submission_id)[-3000:]}"
        time.sleep(0.5)
    return status


def _wait_for_checkpoint(jobs, submission_id: str, run_dir: Path, step: int, weights: str, timeout: float = 180):
    """Block until the complete checkpoint of `step` is on disk (the job must still be running)."""
    path = run_dir / checkpointing.checkpoint_name(step)
    deadline = time.time() + timeout
    while not checkpointing.is_complete(path, weights):
        status = jobs.get_job_status(submission_id).value
        assert status in ("PENDING", "RUNNING"), f"{status} before {path.name}:\n{jobs.get_job_logs(submission_id)}"
        assert time.time() < deadline, f"no {path} after {timeout} s"
        time.sleep(0.1)


def _assert_resumed(output_dir: Path, logs: str, reference: Path, resumed_from: int) -> None:
    """The job resumed at the checkpoint's step + 1 (not at step 1) and trained exactly as the uninterrupted
    reference run did: the same loss and learning rate at every step. The curve holds each step once."""
    assert f"resumed from the checkpoint of step {resumed_from}" in logs
    metrics = read_metrics(output_dir)
    # Had it started over (at step 1, or anywhere but the checkpoint's step + 1), steps would be missing or twice.
    assert [m["step"] for m in metrics] == list(range(1, TOTAL + 1))
    expected = {m["step"]: m for m in read_metrics(reference)}
    for record in metrics:
        same = expected[record["step"]]
        assert math.isclose(record["loss"], same["loss"], rel_tol=0, abs_tol=1e-4), (record, same)
        assert math.isclose(record["learning_rate"], same["learning_rate"], rel_tol=1e-9), (record, same)


@pytest.fixture(scope="module")
def reference(platform, jobs, base_model, dataset, tmp_path_factory) -> tuple[Path, str, subprocess.CompletedProcess]:
    """An uninterrupted LoRA run, submitted the way an operator does: `ray job submit -- python -m ...`."""
    work = tmp_path_factory.mktemp("ft-reference")
    config = _write(_lora_job(base_model, dataset, work / "out", merge_lora=True), work / "job.yaml")
    submission_id = f"ft-ref-{uuid.uuid4().hex[:8]}"
    done = subprocess.run([str(BIN / "ray"), "job", "submit", "--address", DASHBOARD, "--submission-id",
                           submission_id, "--runtime-env-json", json.dumps(JOB_ENV), "--",
                           sys.executable, "-m", "train_jobs.finetune", "--config", str(config)],
                          env=platform.env, capture_output=True, text=True, timeout=300)
    return work / "out", submission_id, done


def test_lora_job_by_ray_job_submit(jobs, reference, base_model):
    out, submission_id, done = reference
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-3000:]
    assert jobs.get_job_status(submission_id).value == "SUCCEEDED"
    status = read_status(out)
    assert status["phase"] == "completed" and status["step"] == TOTAL and status["total_steps"] == TOTAL
    assert status["outputs"]["adapter"] == str(out / "adapter") and (out / "loss.png").stat().st_size > 0
    assert [c["step"] for c in status["checkpoints"]] == [4, 8, 12, 16, 20]  # checkpoint_every, kept 5

    metrics = read_metrics(out)
    assert [m["step"] for m in metrics] == list(range(1, TOTAL + 1))
    for m in metrics:
        assert m["total_steps"] == TOTAL and m["percent"] == round(100 * m["step"] / TOTAL, 2)
        assert m["tokens_per_s"] > 0 and m["tokens"] >= m["trained_tokens"] > 0 and m["eta_s"] >= 0
        assert math.isfinite(m["loss"]) and m["loss"] > 0
    # 5 warmup steps up to the peak, then a cosine decay.
    assert [m["learning_rate"] for m in metrics[:5]] == pytest.approx([0.001, 0.002, 0.003, 0.004, 0.005])
    assert metrics[5]["learning_rate"] == pytest.approx(0.005) and metrics[-1]["learning_rate"] < 0.0002
    assert metrics[-1]["loss"] < 0.5 * metrics[0]["loss"]  # it learned
    # merge_lora: the base model with the adapter folded in, a plain transformers model with the same logits
    assert status["outputs"]["model"] == str(out / "model")
    merged = AutoModelForCausalLM.from_pretrained(out / "model").eval()
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_model), out / "adapter").eval()
    tokens = torch.tensor([[5, 17, 29, 41, 53, 65]])
    with torch.no_grad():
        assert torch.allclose(merged(tokens).logits, adapted(tokens).logits, atol=1e-4)
        with adapted.disable_adapter():  # and the adapter did change the base model
            assert not torch.allclose(merged(tokens).logits, adapted(tokens).logits, atol=1e-3)

    adapter = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 8 and set(adapter["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj",
                                                                    "gate_proj", "up_proj", "down_proj"}
    from safetensors.numpy import load_file

    weights = load_file(out / "adapter" / "adapter_model.safetensors")
    lora_b = [v for k, v in weights.items() if "lora_B" in k]
    assert len(lora_b) == 7 * 2 and all(abs(v).max() > 0 for v in lora_b)  # B starts at zero: trained


def test_stop_then_continue_is_exact(jobs, reference, base_model, dataset, tmp_path):
    out = tmp_path / "out"
    job = _lora_job(base_model, dataset, out)
    first = _submit(jobs, _write(job, tmp_path / "job.yaml"))
    _wait_for_checkpoint(jobs, first, out / "colors", 8, "adapter")
    jobs.stop_job(first)
    assert _wait(jobs, first, timeout=60) == "STOPPED"
    assert read_status(out)["phase"] == "stopped"
    deadline = time.time() + 60
    while _train_workers():  # the training stops with the job (and writes no more checkpoints)
        assert time.time() < deadline, _train_workers()
        time.sleep(0.2)
    latest = checkpointing.latest(out / "colors", "adapter")
    resumed_from = json.loads((latest / checkpointing.TRAIN_STATE).read_text())["step"]
    assert 8 <= resumed_from < TOTAL

    # Without resume the used output_dir is refused (before any Ray work: run here); with it the job carries on.
    assert finetune.run(FinetuneConfig.model_validate(job)) == finetune.EXIT_INVALID
    assert "set resume: true" in read_status(out)["report"][0]["reason"]
    second = _submit(jobs, _write(job | {"resume": True}, tmp_path / "continue.yaml"))
    assert _wait(jobs, second) == "SUCCEEDED", jobs.get_job_logs(second)[-5000:]
    logs = jobs.get_job_logs(second)
    assert f"continuing from {latest.name}" in logs
    status = read_status(out)
    assert status["phase"] == "completed" and [r["step"] for r in status["resumes"]] == [resumed_from]
    _assert_resumed(out, logs, reference[0], resumed_from)


def _train_workers() -> list[psutil.Process]:
    """Ray Train worker processes of the tests' cluster only (descendants of its raylet)."""
    raylets = [p for p in psutil.process_iter(["name", "cmdline"])
               if p.info["name"] == "raylet" and any(RAY_TEMP_DIR in a for a in p.info["cmdline"] or [])]
    assert len(raylets) == 1, raylets
    workers = []
    for proc in raylets[0].children(recursive=True):
        try:
            if "RayTrainWorker" in " ".join(proc.cmdline()):
                workers.append(proc)
        except psutil.Error:  # gone, or a zombie, meanwhile
            pass
    return workers


def test_killed_worker_restarts_from_the_checkpoint(jobs, reference, base_model, dataset, tmp_path):
    out = tmp_path / "out"
    submission_id = _submit(jobs, _write(_lora_job(base_model, dataset, out, max_failures=2), tmp_path / "job.yaml"))
    # Checkpoint 12 on disk means checkpoint 4 was taken in by the Train controller (its report queue holds one).
    _wait_for_checkpoint(jobs, submission_id, out / "colors", 12, "adapter")
    workers = _train_workers()
    assert len(workers) == 1, workers
    workers[0].kill()
    assert _wait(jobs, submission_id) == "SUCCEEDED", jobs.get_job_logs(submission_id)[-5000:]
    status = read_status(out)
    assert status["phase"] == "completed" and status["step"] == TOTAL
    resumes = [r["step"] for r in status["resumes"]]
    assert len(resumes) == 1 and resumes[0] % EVERY == 0 and EVERY <= resumes[0] < TOTAL, status  # from a checkpoint
    _assert_resumed(out, jobs.get_job_logs(submission_id), reference[0], resumes[0])


def test_deepspeed_zero2_full_finetune_two_workers(jobs, base_model, dataset, tmp_path):
    out = tmp_path / "out"
    job = {"name": "full-ds", "job_type": "full", "base_model_path": str(base_model), "dataset_path": str(dataset),
           "output_dir": str(out), "epochs": 1, "learning_rate": 1e-3, "global_batch_size": 8, "micro_batch_size": 2,
           "max_seq_len": 64, "num_workers": 2, "deepspeed": 2, "checkpoint_every": 1, "checkpoints_to_keep": 2}
    submission_id = _submit(jobs, _write(job, tmp_path / "job.yaml"))  # no DS_ACCELERATOR: the job picks it
    assert _wait(jobs, submission_id) == "SUCCEEDED", jobs.get_job_logs(submission_id)[-5000:]
    assert "unable to detect it" not in jobs.get_job_logs(submission_id)  # DeepSpeed was told, did not guess
    status = read_status(out)
    assert status["phase"] == "completed" and [c["step"] for c in status["checkpoints"]] == [1, 2]
    assert [m["step"] for m in read_metrics(out)] == [1, 2]
    last = out / "full-ds" / checkpointing.checkpoint_name(2)
    shards = sorted(p.name for p in (last / checkpointing.DEEPSPEED_DIR / checkpointing.DEEPSPEED_TAG).iterdir())
    assert [s for s in shards if "optim_states" in s] == ["zero_pp_rank_0_mp_rank_00_optim_states.pt",
                                                         "zero_pp_rank_1_mp_rank_00_optim_states.pt"], shards
    assert (last / "rng_rank0.pt").is_file() and (last / "rng_rank1.pt").is_file()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert status["outputs"]["model"] == str(out / "model")
    tuned = AutoModelForCausalLM.from_pretrained(out / "model", dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
    changed = [n for n, p in tuned.state_dict().items() if not torch.equal(p, base.state_dict()[n])]
    assert len(changed) > len(tuned.state_dict()) // 2, changed  # trained, all weights (not an adapter)
    ids = AutoTokenizer.from_pretrained(out / "model")("what is the color of the sky ?", return_tensors="pt")
    with torch.no_grad():
        assert torch.isfinite(tuned(**ids).logits).all()
