"""The SQL layer on both backends: Alembic migrations, the API-key rules of cluster.keys and the admin key of
cluster.auth, on SQLite and on a real PostgreSQL server (with MAAS_TEST_DATABASE=postgres: tests/pg.py starts
one, installing it first when it is missing). No Ray, no engines."""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from cluster import auth
from cluster.keys import service as keys
from cluster.keys.schemas import KeyCreate
from cluster.state.db import DEFAULT_PROJECT, AdminKey, ApiKey, Base, Project, ServedModel, get_engine, migrate, \
    session_scope
from serve_apps.contract import hash_key
from serve_apps.errors import PlatformError
from tests.helpers import DATABASES
from tests.pg import postgres_url


@pytest.fixture(params=DATABASES)
def url(request, tmp_path):
    """A new, empty database per test (a new database on the one PostgreSQL server of the session)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'maas.db'}"
    else:
        url = postgres_url(f"t_{uuid.uuid4().hex[:12]}")
    yield url
    get_engine(url).dispose()


@pytest.fixture
def db(url):
    migrate(url)
    return url


def _alembic(url):
    from pathlib import Path

    from alembic.config import Config

    import cluster.state.db

    config = Config()
    config.set_main_option("script_location", str(Path(cluster.state.db.__file__).parent / "migrations"))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def _new_key(url, label, project=DEFAULT_PROJECT, description="d"):
    with session_scope(url) as session:
        return keys.create_key(session, project, KeyCreate(label=label, description=description))


def _list(url, project=DEFAULT_PROJECT):
    with session_scope(url) as session:
        return keys.list_keys(session, project)


def _delete(url, key_id, project=DEFAULT_PROJECT):
    with session_scope(url) as session:
        return keys.delete_key(session, project, key_id)


def test_migrate_reaches_head_twice_and_matches_the_models(url):
    from alembic import command
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from alembic.script import ScriptDirectory

    migrate(url)
    migrate(url)  # idempotent: every start of the control plane runs it
    engine = get_engine(url)
    head = ScriptDirectory.from_config(_alembic(url)).get_current_head()
    with engine.connect() as conn:
        assert MigrationContext.configure(conn).get_current_revision() == head
        assert set(Base.metadata.tables) <= set(sa.inspect(conn).get_table_names())
        # The migrations build exactly what the mapped classes describe (no table/column/type drift).
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
        assert diff == []
    with session_scope(url) as session:
        assert session.scalars(sa.select(Project.id)).all() == [DEFAULT_PROJECT]
    # Down to nothing and back up: every migration is reversible on this backend.
    engine.dispose()
    command.downgrade(_alembic(url), "base")
    with engine.connect() as conn:
        assert not set(Base.metadata.tables) & set(sa.inspect(conn).get_table_names())
    engine.dispose()
    migrate(url)
    with session_scope(url) as session:
        assert session.get(Project, DEFAULT_PROJECT) is not None


def test_key_create_list_delete(db):
    first, first_hash = _new_key(db, "first", description="for a script")
    second, _ = _new_key(db, "second-key_2")
    assert first.key.startswith("sk-") and first_hash == hash_key(first.key)
    assert first.key_masked == first.key[:4] + "*" * 8 + first.key[-4:]
    listed = _list(db)
    assert {k.label for k in listed} == {"first", "second-key_2"}
    assert [k.created_at for k in listed] == sorted(k.created_at for k in listed)
    by_label = {k.label: k for k in listed}
    assert by_label["first"].description == "for a script" and by_label["first"].id == first.id
    assert all(not hasattr(k, "key") for k in listed)
    with session_scope(db) as session:  # only the hash is stored
        row = session.get(ApiKey, first.id)
        assert row.key_hash == first_hash and first.key not in (row.prefix + row.suffix + row.key_hash)

    assert _delete(db, first.id) == first_hash  # by id
    assert _delete(db, "second-key_2") == hash_key(second.key)  # by label
    assert _list(db) == []
    with pytest.raises(PlatformError) as err:
        _delete(db, first.id)
    assert err.value.spec.code == "MaaS.0404"


def test_label_unique_per_project_only(db):
    _new_key(db, "same")
    with pytest.raises(PlatformError) as err:
        _new_key(db, "same")
    assert err.value.spec.code == "MaaS.0409"
    with session_scope(db) as session:
        session.add(Project(id="other", name="other"))
    _new_key(db, "same", project="other")
    assert [k.label for k in _list(db, "other")] == ["same"]
    assert len(_list(db)) == 1
    with pytest.raises(PlatformError):  # another project's key can't be deleted through this one
        _delete(db, "same", project="nope")


def test_at_most_thirty_live_keys(db):
    for i in range(keys.MAX_LIVE_KEYS):
        _new_key(db, f"k{i}")
    with pytest.raises(PlatformError) as err:
        _new_key(db, "one-too-many")
    assert err.value.spec.code == "MaaS.0400"
    _delete(db, "k0")
    _new_key(db, "one-too-many")
    assert len(_list(db)) == keys.MAX_LIVE_KEYS


def test_constraints_are_enforced(db):
    _, key_hash = _new_key(db, "a")
    row = dict(label="b", description="d", key_hash=key_hash, prefix="sk-x", suffix="abcd")
    with pytest.raises(IntegrityError):  # key_hash is unique
        with session_scope(db) as session:
            session.add(ApiKey(id="dup-hash", project_id=DEFAULT_PROJECT, **row))
    with pytest.raises(IntegrityError):  # (project_id, label) is unique even past the 409 check
        with session_scope(db) as session:
            session.add(ApiKey(id="dup-label", project_id=DEFAULT_PROJECT, **(row | {"label": "a",
                                                                                      "key_hash": "0" * 64})))
    with pytest.raises(IntegrityError):  # foreign keys hold (SQLite: PRAGMA foreign_keys=ON)
        with session_scope(db) as session:
            session.add(ApiKey(id="orphan", project_id="no-such-project", **(row | {"key_hash": "1" * 64})))
    assert [k.label for k in _list(db)] == ["a"]


def test_lookups_with_oversized_ids_are_misses_not_errors(db):
    # Path parameters reach these lookups unchecked; PostgreSQL must not fail on values longer than the column.
    with session_scope(db) as session:
        assert session.get(Project, "p" * 500) is None
        assert session.get(ServedModel, "m" * 500) is None
    with pytest.raises(PlatformError) as err:
        _delete(db, "k" * 500)
    assert err.value.spec.code == "MaaS.0404"


def test_admin_key(db):
    with session_scope(db) as session:
        assert auth.ensure_admin_key(session, "admin-chosen") is None  # chosen: nothing to show
    with session_scope(db) as session:
        assert auth.ensure_admin_key(session, None) is None  # exists already: no second one
        assert auth.is_admin(session, "admin-chosen") and not auth.is_admin(session, "admin-other")
        assert session.scalar(sa.select(sa.func.count()).select_from(AdminKey)) == 1
        session.execute(sa.delete(AdminKey))
    with session_scope(db) as session:
        generated = auth.ensure_admin_key(session, None)
    with session_scope(db) as session:
        assert generated.startswith("admin-") and auth.is_admin(session, generated)
        assert session.scalar(sa.select(AdminKey.id)) >= 1  # autoincrement works on both


def test_served_model_card_json_round_trip(db):
    card = {"id": "tiny-chat", "context_length": 2048, "tags": ["chat", "tiny"], "price": {"in": 0.5},
            "note": "naïve — 模型", "nested": {"none": None, "flag": True}}
    with session_scope(db) as session:
        session.add(ServedModel(model_id="tiny-chat", project_id=None, app_name="tiny-chat",
                                deployment_name="engine-tiny-chat", card=card))
        session.add(ServedModel(model_id="own", project_id=DEFAULT_PROJECT, app_name="own",
                                deployment_name="engine-own", card={}))
    with session_scope(db) as session:
        row = session.get(ServedModel, "tiny-chat")
        assert row.card == card and row.created_at > 0
        row.card = card | {"created": 123}  # replaced, as register_builtin_models does
    with session_scope(db) as session:
        assert session.get(ServedModel, "tiny-chat").card["created"] == 123
        visible = session.scalars(sa.select(ServedModel.model_id).where(
            (ServedModel.project_id.is_(None)) | (ServedModel.project_id == DEFAULT_PROJECT))
            .order_by(ServedModel.model_id)).all()
        assert visible == ["own", "tiny-chat"]


def test_ids_limits_and_quotas_past_32_bits(db):
    """A usage record id past 2**31 (PostgreSQL's INTEGER ends there) and limits/quotas above it are stored
    and read back; the id sequence keeps counting from there."""
    from cluster.state.db import MAX_BIGINT, Endpoint, Preset, ServiceEvent, UsageRecord

    big = 5_000_000_000
    with session_scope(db) as session:
        session.add(ServedModel(model_id="m64", app_name="a", deployment_name="d", card={}))
        session.flush()
        session.add(Preset(model_id="m64", kind="free", free_quota_tokens=big, rpm=big, tpm=MAX_BIGINT))
        session.add(Endpoint(id="ep64", project_id=DEFAULT_PROJECT, name="ep64", target="m64", rpm=big, tpm=big))
        session.add(UsageRecord(id=2**31 + 5, request_id="r-big", ts=1.0, project_id=DEFAULT_PROJECT))
        session.add(ServiceEvent(id=2**31 + 5, service_id="s", project_id=DEFAULT_PROJECT, status="Running"))
    if db.startswith("postgresql"):  # explicit ids do not move a sequence: take it past 2**31 as a long run would
        with get_engine(db).begin() as conn:
            for table in ("usage_records", "service_events"):
                conn.execute(sa.text(f"SELECT setval('{table}_id_seq', {2**31 + 5})"))
    with session_scope(db) as session:
        session.add(UsageRecord(request_id="r-next", ts=2.0, project_id=DEFAULT_PROJECT))
        session.add(ServiceEvent(service_id="s", project_id=DEFAULT_PROJECT, status="Stopped"))
    with session_scope(db) as session:
        preset, endpoint = session.get(Preset, "m64"), session.get(Endpoint, "ep64")
        assert (preset.free_quota_tokens, preset.rpm, preset.tpm) == (big, big, MAX_BIGINT)
        assert (endpoint.rpm, endpoint.tpm) == (big, big)
        ids = session.scalars(sa.select(UsageRecord.id).order_by(UsageRecord.id)).all()
        assert ids == [2**31 + 5, 2**31 + 6]
        events = session.scalars(sa.select(ServiceEvent.id).order_by(ServiceEvent.id)).all()
        assert events == [2**31 + 5, 2**31 + 6]
