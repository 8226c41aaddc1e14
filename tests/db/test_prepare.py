"""What the control plane does on start (`cluster.app.prepare`) on a real SQLite database: the admin key is
made on the first start only, or taken from MAAS_ADMIN_KEY, and stored as a hash."""

from __future__ import annotations

from sqlalchemy import select


def test_first_start_makes_an_admin_key_once(tmp_path, monkeypatch):
    from cluster import app, auth
    from cluster.settings import get_settings
    from cluster.state.db import AdminKey, session_scope
    from serve_apps.contract import hash_key

    monkeypatch.setenv("MAAS_HOME", str(tmp_path))
    monkeypatch.delenv("MAAS_DATABASE_URL", raising=False)
    monkeypatch.delenv("MAAS_ADMIN_KEY", raising=False)
    get_settings.cache_clear()
    try:
        secret = app.prepare(["tiny-chat"])
        assert secret and secret.startswith("admin-")
        assert app.prepare(["tiny-chat"]) is None  # shown once: a second start makes none
        url = get_settings().database_url
        with session_scope(url) as session:
            assert auth.is_admin(session, secret) and not auth.is_admin(session, secret + "x")
            assert session.scalars(select(AdminKey.key_hash)).all() == [hash_key(secret)]
    finally:
        get_settings.cache_clear()


def test_admin_key_from_the_environment(tmp_path, monkeypatch):
    from cluster import app, auth
    from cluster.settings import get_settings
    from cluster.state.db import session_scope

    monkeypatch.setenv("MAAS_HOME", str(tmp_path))
    monkeypatch.setenv("MAAS_ADMIN_KEY", "admin-from-env")
    get_settings.cache_clear()
    try:
        assert app.prepare([]) is None  # chosen by the operator: nothing to show
        assert app.prepare([]) is None
        with session_scope(get_settings().database_url) as session:
            assert auth.is_admin(session, "admin-from-env")
    finally:
        get_settings.cache_clear()
