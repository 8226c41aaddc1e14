"""`maas env` then `ray start --head` (the README's block): in token mode Ray's `ray start` refuses to start
without a token, and nothing made one (issue 28). `maas env` makes Ray's default token when there is none, and
keeps it afterwards."""

from __future__ import annotations

import subprocess

from tests.helpers import BIN


def test_maas_env_provides_a_token_for_ray_start_and_keeps_it(tmp_path):
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "MAAS_HOME": str(tmp_path / "maas")}
    first = subprocess.run([str(BIN / "maas"), "env"], env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert "export RAY_AUTH_MODE=token" in first.stdout
    token = (tmp_path / ".ray" / "auth_token").read_text()
    assert len(token) >= 32
    again = subprocess.run([str(BIN / "maas"), "env"], env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and (tmp_path / ".ray" / "auth_token").read_text() == token
