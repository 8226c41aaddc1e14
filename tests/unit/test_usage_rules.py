"""Call statistics' rules without a database (spec §9.2): nearest-rank percentiles, which granularities a
range allows, what a query refuses, and the messages shown for error codes. (The statistics on real databases,
the REST routes and the CLI: tests/db/test_usage_stats.py.)"""

from __future__ import annotations

from datetime import datetime

import pytest

from cluster.usage.schemas import UsageQuery
from cluster.usage.stats import error_message, stats
from serve_apps.errors import PlatformError


def test_percentiles_are_nearest_rank():
    assert stats(list(range(100, 0, -1))).model_dump() == dict(avg=50.5, max=100, p50=50, p80=80, p90=90, p99=99)
    assert stats([5, 1, 3]).model_dump() == dict(avg=3.0, max=5, p50=3, p80=5, p90=5, p99=5)
    assert stats([7]).model_dump() == dict(avg=7, max=7, p50=7, p80=7, p90=7, p99=7)
    assert stats([]).model_dump() == dict(avg=None, max=None, p50=None, p80=None, p90=None, p99=None)


@pytest.mark.parametrize("kw, allowed", [
    ({"range": "today"}, {"minute", "hour", "day"}),
    ({"range": "yesterday"}, {"minute", "hour", "day"}),
    ({"range": "3d"}, {"hour", "day"}),
    ({"range": "7d"}, {"hour", "day"}),
    ({"range": "14d"}, {"day"}),
    ({"range": "custom", "start": datetime(2025, 3, 1), "end": datetime(2025, 3, 2)}, {"minute", "hour", "day"}),
    ({"range": "custom", "start": datetime(2025, 3, 1), "end": datetime(2025, 3, 2, 0, 1)}, {"hour", "day"}),
    ({"range": "custom", "start": datetime(2025, 3, 1), "end": datetime(2025, 3, 8)}, {"hour", "day"}),
    ({"range": "custom", "start": datetime(2025, 3, 1), "end": datetime(2025, 3, 9)}, {"day"}),
    ({"range": "custom", "start": datetime(2025, 3, 1), "end": datetime(2025, 3, 31)}, {"day"}),
])
def test_granularity_rules(kw, allowed):
    for granularity in ("minute", "hour", "day"):
        if granularity in allowed:
            assert UsageQuery(granularity=granularity, **kw).granularity == granularity
        else:
            with pytest.raises(PlatformError) as caught:
                UsageQuery(granularity=granularity, **kw)
            assert caught.value.spec.code == "MaaS.0400" and caught.value.status == 400
            assert "not allowed" in caught.value.message
    assert UsageQuery(**kw).granularity == ("hour" if "hour" in allowed else "day")


@pytest.mark.parametrize("kw, reason", [
    ({"range": "custom", "start": datetime(2025, 3, 1), "end": datetime(2025, 3, 31, 0, 0, 1)}, "at most 30 days"),
    ({"range": "custom", "start": datetime(2025, 3, 1)}, "needs start and end"),
    ({"range": "custom", "start": datetime(2025, 3, 2), "end": datetime(2025, 3, 1)}, "end must be after start"),
    ({"range": "today", "start": datetime(2025, 3, 1)}, "range=custom only"),
    ({"tz": "Mars/Olympus"}, "unknown time zone"),
])
def test_invalid_ranges(kw, reason):
    with pytest.raises(PlatformError) as caught:
        UsageQuery(**kw)
    assert caught.value.spec.code == "MaaS.0400" and reason in caught.value.message


def test_error_messages():
    assert error_message("ModelArts.81009", 404) == "Invalid model."
    assert error_message("MaaS.0400", 400) == "Bad Request"  # the catalogue's text is only a placeholder
    assert error_message("Vendor.1", 503) == "Service Unavailable"
    assert error_message("", 599) == ""
