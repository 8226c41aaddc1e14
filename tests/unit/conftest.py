"""The unit tier runs without a Ray cluster: a test that calls ray.init here fails (tests.helpers.forbid_ray_init)."""

from __future__ import annotations

import pytest

from tests.helpers import forbid_ray_init


@pytest.fixture(scope="package", autouse=True)  # package: before any module's own fixtures too
def no_ray_cluster():
    with pytest.MonkeyPatch.context() as patch:
        forbid_ray_init(patch)
        yield
