"""`maas up` / `maas status` / catalog, and first-start admin key handling on a real SQLite database."""

from __future__ import annotations


from sqlalchemy import select


def test_up_prints_the_urls_and_models(platform):
    out = platform.up_output
    assert "MaaS is up" in out
    assert f"{platform.base_url}/v1" in out and f"{platform.base_url}/api/docs" in out
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


def test_first_start_makes_an_admin_key_once(tmp_path, monkeypatch):
    from cluster import api, keys
    from cluster.db import AdminKey, session_scope
    from cluster.settings import get_settings

    monkeypatch.setenv("MAAS_HOME", str(tmp_path))
    monkeypatch.delenv("MAAS_DATABASE_URL", raising=False)
    monkeypatch.delenv("MAAS_ADMIN_KEY", raising=False)
    get_settings.cache_clear()
    try:
        secret = api.prepare(["tiny-chat"])
        assert secret and secret.startswith("admin-")
        assert api.prepare(["tiny-chat"]) is None  # shown once: a second start makes none
        url = get_settings().database_url
        with session_scope(url) as session:
            assert keys.is_admin(session, secret) and not keys.is_admin(session, secret + "x")
            assert session.scalars(select(AdminKey.key_hash)).all() == [keys.hash_key(secret)]
    finally:
        get_settings.cache_clear()


def test_admin_key_from_the_environment(tmp_path, monkeypatch):
    from cluster import api, keys
    from cluster.db import session_scope
    from cluster.settings import get_settings

    monkeypatch.setenv("MAAS_HOME", str(tmp_path))
    monkeypatch.setenv("MAAS_ADMIN_KEY", "admin-from-env")
    get_settings.cache_clear()
    try:
        assert api.prepare([]) is None  # chosen by the operator: nothing to show
        assert api.prepare([]) is None
        with session_scope(get_settings().database_url) as session:
            assert keys.is_admin(session, "admin-from-env")
    finally:
        get_settings.cache_clear()
