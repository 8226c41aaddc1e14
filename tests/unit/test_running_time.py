"""Running time as auto-stop counts it (cluster.runtime.running_time): only while counted, over every start."""

from __future__ import annotations

import time

from cluster.runtime.running_time import count_running, running_seconds


def test_running_seconds_adds_the_open_period_to_the_closed_ones():
    assert running_seconds(None, None, at=100) == 0
    assert running_seconds(30, None, at=100) == 30  # stopped: only what was counted before
    assert running_seconds(None, 60, at=100) == 40
    assert running_seconds(30, 60, at=100) == 70
    assert running_seconds(30, 160, at=100) == 30  # a clock behind the start counts nothing, never less


def test_running_seconds_defaults_to_now(monkeypatch):
    monkeypatch.setattr(time, "time", lambda: 1000.9)
    assert running_seconds(10, 900) == 110


def test_count_running_opens_and_closes_periods():
    assert count_running(True, 0, None, 50) == {"running_since": 50}  # enters a counted status
    assert count_running(True, 0, 40, 50) == {}  # already counting
    assert count_running(False, 10, 40, 50) == {"running_since": None, "run_seconds": 20}  # leaves it
    assert count_running(False, 10, None, 50) == {}  # was not counting
    # Two starts: 100..130 and 200..210 make 40 seconds.
    row = {"run_seconds": 0, "running_since": None}
    for counted, at in ((True, 100), (False, 130), (True, 200), (False, 210)):
        row |= count_running(counted, row["run_seconds"], row["running_since"], at)
    assert row == {"run_seconds": 40, "running_since": None}
