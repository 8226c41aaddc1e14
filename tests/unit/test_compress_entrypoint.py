"""The compression entrypoint's checks before any compute (`python -m quantize.compress`): they need no
llmcompressor, so they run in the platform's venv. The real jobs: tests/e2e/test_compression.py."""

from __future__ import annotations

import json

from quantize import compress
from quantize.config import CompressConfig
from train_jobs.progress import read_status


def _config(tmp_path, model_config: dict | None, **fields) -> CompressConfig:
    model = tmp_path / "model-in"
    model.mkdir(exist_ok=True)
    if model_config is not None:
        (model / "config.json").write_text(json.dumps(model_config))
    return CompressConfig(name="j1", strategy=fields.pop("strategy", "awq-w4a16"), base_model_path=model,
                          output_dir=tmp_path / "out", **fields)


def test_refusals_end_the_job_before_compute_with_the_reason(tmp_path):
    cases = [(None, "not a Hugging Face model directory"),
             ({"architectures": ["BertModel"]}, "BertModel cannot be compressed"),
             ({"architectures": ["LlamaForCausalLM"], "hidden_size": 100, "intermediate_size": 384},
              "hidden_size = 100 is not a multiple of 128")]
    for model_config, reason in cases:
        config = _config(tmp_path, model_config)
        assert compress.run(config) == compress.EXIT_INVALID
        status = read_status(config.output_dir)
        assert status["phase"] == "failed" and reason in status["error"], status
        assert not config.model_dir.exists()


def test_an_output_dir_holding_a_model_is_never_overwritten(tmp_path):
    config = _config(tmp_path, {"architectures": ["LlamaForCausalLM"], "hidden_size": 128,
                                "intermediate_size": 384})
    config.model_dir.mkdir(parents=True)
    (config.model_dir / "keep").write_text("x")
    assert compress.run(config) == compress.EXIT_INVALID
    assert "exists already" in read_status(config.output_dir)["error"]
    assert (config.model_dir / "keep").read_text() == "x"


def test_a_bad_config_file_is_refused(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("name: j\nstrategy: int2\n")
    assert compress.main(["--config", str(path)]) == compress.EXIT_INVALID


class _Tokenizer:
    chat_template = "x"

    def apply_chat_template(self, messages, tokenize, **kwargs):
        return "|".join(m["content"] for m in messages) + f"|{kwargs}"


def test_calibration_samples_are_rendered_as_served(tmp_path):
    config = _config(tmp_path, None, num_samples=5, chat_template_kwargs={"enable_thinking": False})
    texts = compress.calibration_texts(config, _Tokenizer())
    assert len(texts) == 5 and all(t.endswith("{'enable_thinking': False}") for t in texts)
    data = tmp_path / "calib.jsonl"
    data.write_text(json.dumps({"instruction": "q1", "output": "a1"}) + "\n")
    own = compress.calibration_texts(config.model_copy(update={"dataset_path": data}), _Tokenizer())
    assert own == ["q1|a1|{'enable_thinking': False}"]
