"""What the db tier's modules share: a fresh SQLite database, migrated to head."""

from __future__ import annotations

import pytest

from cluster.state.db import migrate
from tests.db import world


@pytest.fixture
def migrated(tmp_path) -> str:
    """The URL of a new SQLite database at the head migration (with the default project)."""
    url = f"sqlite:///{tmp_path / 'maas.db'}"
    migrate(url)
    return url


@pytest.fixture
def url(migrated) -> str:
    """A migrated database holding tests/db/world.py's project, key and grant (modules may define their own)."""
    return world.build(migrated)
