"""The test tiers, marked by the directory a test lives in:

    tests/unit  `unit`  no Ray cluster, no engine, no database server: rules, schemas, windows, readers
    tests/db    `db`    a real database (SQLite; PostgreSQL too with MAAS_TEST_DATABASE=postgres), no platform
    tests/e2e   `e2e`   the session's real platform (tests/e2e/conftest.py starts it)

`pytest tests/unit tests/db` is the fast tier; `pytest -m "not e2e"` selects the same tests. The db tier's
PostgreSQL cases (marker `postgres`) are skipped unless PostgreSQL was asked for (tests.helpers.postgres_enabled).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import postgres_enabled

HERE = Path(__file__).resolve().parent
TIERS = ("unit", "db", "e2e")


@pytest.hookimpl(tryfirst=True)  # before `-m` selects on the markers
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_postgres = pytest.mark.skip(reason="PostgreSQL runs with MAAS_TEST_DATABASE=postgres (make test's second "
                                            "pass) or MAAS_TEST_POSTGRES_URL")
    for item in items:
        try:
            tier = Path(item.path).resolve().relative_to(HERE).parts[0]
        except ValueError:
            continue
        if tier not in TIERS:
            raise pytest.UsageError(f"{item.nodeid}: a test lives in one of tests/{{{','.join(TIERS)}}}/")
        item.add_marker(getattr(pytest.mark, tier))
        if item.get_closest_marker("postgres") is not None and not postgres_enabled():
            item.add_marker(skip_postgres)
