"""`maas up` / `maas status` / the catalog on the session's platform. (First-start admin key handling without a
platform: tests/db/test_prepare.py.)"""

from __future__ import annotations


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


def test_catalog_through_cli_and_api(platform):
    models = {m["id"]: m for m in platform.maas_json("models", "list")}
    chat, embed = models["tiny-chat"], models["all-minilm-l6-v2"]
    assert chat["types"] == ["text-generation"] and chat["context_length"] == 2048
    assert "function-calling" in chat["capabilities"] and "deep-thinking" in chat["capabilities"]
    assert "finetune-lora" in chat["supported_jobs"]
    assert set(embed["types"]) == {"embedding", "rerank"}
    assert "tiny-chat" in platform.maas("models", "list").stdout
