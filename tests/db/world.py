"""The accounting tests' world: project p1 with key SECRET, granted tiny-chat (1,000 free tokens, TPM 500), and
the accounting actor's class to run in-process on it (no Ray cluster). The `url` fixture of tests/db/conftest.py
builds it."""

from __future__ import annotations

import time

from cluster.accounting.actor import AccountingActor
from cluster.presets.service import register_builtin_models
from cluster.state.db import ApiKey, Preset, PresetGrant, Project, session_scope
from serve_apps.contract import hash_key

SECRET = "sk-once-test"
Actor = AccountingActor.__ray_actor_class__


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
