"""What a multi-node cluster asks of the settings: shared storage for every file a replica or a worker reads,
and a database every node reaches (SQLite refused with a clear message)."""

from __future__ import annotations

import pytest

from cluster.runtime.nodes import ClusterUnsupported, check_database
from cluster.settings import Settings


def test_sqlite_is_refused_on_more_than_one_node():
    check_database("sqlite:////tmp/maas.db", 1)
    check_database("postgresql+psycopg://u:p@db/maas", 3)
    with pytest.raises(ClusterUnsupported) as refused:
        check_database("sqlite:////tmp/maas.db", 2)
    assert "MAAS_DATABASE_URL" in str(refused.value) and "2 nodes" in str(refused.value)


def test_shared_storage_holds_what_other_nodes_read(tmp_path, monkeypatch):
    monkeypatch.setenv("MAAS_HOME", str(tmp_path / "home"))
    local = Settings()
    assert local.models_dir == tmp_path / "home" / "models" and local.finetune_dir() == tmp_path / "home" / "finetune"
    monkeypatch.setenv("MAAS_STORAGE", str(tmp_path / "nfs"))
    shared = Settings()
    for path in (shared.models_dir, shared.finetune_dir(), shared.datasets_dir("p"), shared.compression_dir("p")):
        assert path.is_relative_to(tmp_path / "nfs"), path
    # what stays on the control plane's node: its SQLite default, credentials, logs
    assert shared.credentials_file.parent == tmp_path / "home" and "home" in shared.database_url
