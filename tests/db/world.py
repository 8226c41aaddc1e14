"""The accounting tests' world: project p1 with key SECRET, granted tiny-chat (1,000 free tokens, TPM 500), and
the accounting actor's class to run in-process on it (no Ray cluster). The `url` fixture of tests/db/conftest.py
builds it. The sharded world (two projects on two shards, `build_shards`): tests/db/test_accounting_shards.py, and
tests/e2e/test_accounting_shards_on_ray.py for the real actors on a Ray cluster."""

from __future__ import annotations

import json
import time
from contextlib import contextmanager

import pytest

from cluster.accounting.actor import AccountingActor
from cluster.presets.service import register_builtin_models
from cluster.settings import get_settings
from cluster.state.db import ApiKey, Endpoint, Preset, PresetGrant, Project, session_scope
from serve_apps.contract import AdmissionRequest, hash_key, project_shard

SECRET = "sk-once-test"
Actor = AccountingActor.__ray_actor_class__
ALPHA, BETA = "p-alpha", "pa"  # shard 0 and shard 1 of 2
SHARD_KEYS = {"sk-alpha": ALPHA, "sk-b1": BETA, "sk-b2": BETA}
SHARD_RPM = 10


def add_project_with_key(session, secret: str = SECRET) -> None:
    """tiny-chat registered, project p1 and its key k1 (the secret given)."""
    register_builtin_models(session, ["tiny-chat"])
    session.add(Project(id="p1", name="p1"))
    session.flush()
    session.add(ApiKey(id="k1", project_id="p1", label="k1", description="k1", key_hash=hash_key(secret),
                       prefix="sk-o", suffix="test"))


def build(url: str) -> str:
    with session_scope(url) as session:
        add_project_with_key(session)
        preset = session.get(Preset, "tiny-chat")
        preset.free_quota_tokens, preset.tpm = 1000, 500
        session.add(PresetGrant(project_id="p1", model_id="tiny-chat"))
    return url


def tpm_used(actor) -> int:
    return max(actor._windows.used(key, time.time()) for key in actor._windows._windows if "tpm" in key)


def build_shards(url: str) -> str:
    """ALPHA and BETA (shards 0 and 1 of 2), each with an endpoint "ep" (RPM SHARD_RPM) and the SHARD_KEYS."""
    import zlib

    assert (project_shard(ALPHA, 2), project_shard(BETA, 2)) == (0, 1)
    # BETA's two keys are first sent to different shards (by their hash): both end at shard 1.
    assert {zlib.crc32(hash_key(k).encode()) % 2 for k in ("sk-b1", "sk-b2")} == {0, 1}
    with session_scope(url) as session:
        register_builtin_models(session, ["tiny-chat"])
        preset = session.get(Preset, "tiny-chat")
        preset.rpm, preset.tpm = 10**6, 10**9  # only the endpoints' limits are under test
        for project in (ALPHA, BETA):
            session.add(Project(id=project, name=project))
        session.flush()
        for project in (ALPHA, BETA):  # window keys ep-rpm:ep-p-alpha and ep-rpm:ep-pa
            session.add(Endpoint(id=f"ep-{project}", project_id=project, name="ep", target="tiny-chat",
                                 rpm=SHARD_RPM, tpm=10**9, enabled=True))
        for secret, project in SHARD_KEYS.items():
            session.add(ApiKey(id=secret, project_id=project, label=secret, description="", key_hash=hash_key(secret),
                               prefix="sk-x", suffix="test"))
    return url


def shard_request(secret: str, model: str = "ep") -> AdmissionRequest:
    return AdmissionRequest(hash_key(secret), model, 5, 10)


@contextmanager
def offline_control_plane(home, admin_key: str, base_config: dict, **env: str):
    """cluster.app on a new SQLite database in `home`, without Ray: the accounting actor's reloads and the
    reconciler's wake-up are no-ops (the tests write what those would). tiny-chat's config.json is `base_config`;
    `env` sets more MAAS_* variables. Yields the FastAPI app."""
    with pytest.MonkeyPatch.context() as patch:
        (home / "models" / "tiny-chat").mkdir(parents=True)
        (home / "models" / "tiny-chat" / "config.json").write_text(json.dumps(base_config))
        patch.setenv("MAAS_HOME", str(home))
        patch.delenv("MAAS_DATABASE_URL", raising=False)
        patch.setenv("MAAS_ADMIN_KEY", admin_key)
        for name, value in env.items():
            patch.setenv(name, value)
        get_settings.cache_clear()
        import cluster.endpoints.router as endpoints_router
        import cluster.finetune.router as finetune_router
        import cluster.keys.router as keys_router
        import cluster.my_models.router as my_models_router
        import cluster.presets.router as presets_router
        import cluster.services.service as services
        from cluster.app import app, prepare

        async def nothing(*_args, **_kwargs):
            return None

        patch.setattr(keys_router, "on_every_shard", nothing)
        patch.setattr(presets_router, "reload_accounting", nothing)
        patch.setattr(my_models_router, "reload_accounting", nothing)
        patch.setattr(endpoints_router, "reload_accounting", nothing)
        patch.setattr(services, "after_change", nothing)
        patch.setattr(finetune_router, "reload_accounting_blocking", lambda _log: None)
        prepare(["tiny-chat", "all-minilm-l6-v2"])
        try:
            yield app
        finally:
            get_settings.cache_clear()
