"""`maas up` / `maas status` / the catalog on the session's platform. (First-start admin key handling without a
platform: tests/db/test_prepare.py.)"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path


def test_up_prints_the_urls_and_models(platform):
    out = platform.up_output
    assert "MaaS is up" in out
    assert f"{platform.base_url}/v1" in out and f"{platform.base_url}/api/docs" in out
    assert f"{platform.base_url}/api/console/" in out  # the web console
    assert "tiny-chat" in out and "all-minilm-l6-v2" in out
    assert "Admin key" not in out  # MAAS_ADMIN_KEY was given, so none is generated or shown
    # Only the progress and the summary: no JSON log lines (httpx, Alembic, vLLM) or Serve option dumps.
    assert '"asctime"' not in out + platform.up_stderr and "Deployment Options" not in out + platform.up_stderr


def test_status_shows_every_application_running(platform):
    report = platform.maas_json("status")
    apps = report["applications"]
    assert {"maas-control", "maas-gateway", "tiny-chat", "all-minilm-l6-v2"} <= set(apps)
    for name, app in apps.items():
        assert app["status"] == "RUNNING", (name, app)
        for deployment in app["deployments"].values():
            assert deployment["status"] in ("HEALTHY", "UPSCALING", "DOWNSCALING")
            assert deployment["replicas"].get("RUNNING", 0) >= 1
    table = platform.maas("status").stdout
    assert "engine-tiny-chat" in table and "running" in table.lower()


def test_up_scales_nothing_on_an_idle_platform(platform):
    """maas up's readiness probes tripped the llm policy's panic window: tiny-chat went to 2 replicas on an idle
    laptop (two minutes of both cores). Read from Serve's controller log of the session's cluster: no upscaling
    until a few seconds after `maas up` returned (later tests load the engines on purpose)."""
    from tests.helpers import RAY_TEMP_DIR

    logs = list(Path(RAY_TEMP_DIR, "session_latest", "logs", "serve").glob("controller_*.log"))
    assert logs, "no Serve controller log"
    until = datetime.fromtimestamp(platform.up_done_at + 3)
    upscaled = []
    for log in logs:
        for line in log.read_text(errors="replace").splitlines():
            stamp = re.search(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)", line)
            if re.search(r"Upscaling .* from [1-9]", line) and stamp and datetime.fromisoformat(stamp[1]) <= until:
                upscaled.append(line)
    assert upscaled == []


def test_catalog_through_cli_and_api(platform):
    models = {m["id"]: m for m in platform.maas_json("models", "list")}
    chat, embed = models["tiny-chat"], models["all-minilm-l6-v2"]
    assert chat["types"] == ["text-generation"] and chat["context_length"] == 2048
    assert "function-calling" in chat["capabilities"] and "deep-thinking" in chat["capabilities"]
    assert "finetune-lora" in chat["supported_jobs"]
    assert set(embed["types"]) == {"embedding", "rerank"}
    assert "tiny-chat" in platform.maas("models", "list").stdout
