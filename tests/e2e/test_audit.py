"""What the whole session left behind: no secret in any log. Every API key the suite created (the platform
makes them as `sk-` + 48 URL-safe characters) and the admin key must appear in no log file of the platform
or of Ray (drivers, workers, Serve replicas, jobs), after every other test ran."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.helpers import RAY_TEMP_DIR

pytestmark = [pytest.mark.e2e, pytest.mark.audit]
SECRET = re.compile(rb"sk-[A-Za-z0-9_-]{48}")


def _logs(platform) -> list[Path]:
    roots = [Path(RAY_TEMP_DIR), platform.home / "logs", platform.home / "finetune"]
    return [p for root in roots if root.exists() for p in root.rglob("*")
            if p.is_file() and not p.is_symlink() and (p.suffix in (".log", ".err", ".out", ".txt", ".jsonl")
                                                      or "log" in p.name)]


def test_no_secret_is_in_any_log(platform):
    files = _logs(platform)
    assert len(files) > 20  # the Ray session's logs are there to read
    admin = platform.admin_key.encode()
    leaks = []
    for path in files:
        data = path.read_bytes()
        if admin in data or SECRET.search(data):
            leaks.append(str(path))
    assert leaks == []
