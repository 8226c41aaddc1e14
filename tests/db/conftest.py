"""What the db tier's modules share: a fresh SQLite database, migrated to head; no Ray cluster (a test that calls
ray.init here fails: tests.helpers.forbid_ray_init)."""

from __future__ import annotations

import pytest

from cluster.state.db import migrate
from tests.db import world
from tests.helpers import forbid_ray_init


@pytest.fixture(scope="package", autouse=True)  # package: before any module's own fixtures too
def no_ray_cluster():
    with pytest.MonkeyPatch.context() as patch:
        forbid_ray_init(patch)
        yield


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
