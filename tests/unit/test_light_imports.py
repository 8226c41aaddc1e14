"""What the control plane and `maas` import when they start: no vLLM, torch or transformers (each is seconds of
CPU per process: `maas up` and the control plane's replica used to import them at start for nothing, on the cold
start's path). serve_apps.ray_compat imports its ray.llm names on first use; the gateway still needs vLLM's
protocol models, and an engine everything."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("vllm", "torch", "transformers", "ray.serve.llm", "ray.llm")


@pytest.mark.parametrize("module", ["cluster.app", "cluster.cli.main", "cluster.cli.platform",
                                    "serve_apps.catalog", "serve_apps.ray_compat"])
def test_starting_the_control_plane_imports_no_engine_library(module):
    code = (f"import sys, {module}; "
            f"print(','.join(sorted(m for m in {HEAVY!r} if m in sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "", f"{module} imports {done.stdout.strip()}"


def test_the_lazy_names_resolve_to_ray_llms_own():
    from ray.llm._internal.serve.core.configs.openai_api_models import ChatCompletionRequest
    from ray.llm._internal.serve.core.ingress.utils import _sanitize_chat_completion_request

    from serve_apps import ray_compat

    assert ray_compat.ChatCompletionRequest is ChatCompletionRequest
    assert ray_compat.sanitize_chat_request is _sanitize_chat_completion_request
    for name in ray_compat._LAZY:
        assert getattr(ray_compat, name) is not None
    with pytest.raises(AttributeError):
        ray_compat.no_such_name  # noqa: B018
