"""One real platform per test session: a dedicated Ray head, `maas up`, real vLLM engines, SQLite.

The built models are cached across sessions (MAAS_TEST_CACHE, default ~/.cache/maas-tests) because
building tiny-chat takes minutes; the database and everything else are new for every session.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# MAAS_TEST_SLOT=N moves every port of the tests' cluster, so two test sessions can run side by side.
SLOT = int(os.environ.get("MAAS_TEST_SLOT", "0"))
RAY_PORT, DASHBOARD_PORT, SERVE_PORT = 6390 + 10 * SLOT, 8275 + 10 * SLOT, 8380 + 10 * SLOT


@dataclass
class Platform:
    home: Path
    env: dict
    base_url: str
    up_output: str
    admin_key: str
    database_url: str
    up_stderr: str = ""

    def maas(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run([str(BIN / "maas"), *args], env=self.env, capture_output=True, text=True,
                              timeout=900)
        if check and done.returncode != 0:
            raise AssertionError(f"maas {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
        return done

    def maas_json(self, *args: str):
        return json.loads(self.maas(*args, "--json").stdout)

    def new_key(self, label: str | None = None) -> dict:
        return self.maas_json("keys", "create", "--label", label or f"k{time.time_ns()}")

    def client(self, key: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base_url + "/v1", api_key=key, max_retries=0, timeout=120)

    def admin(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url + "/api/v1", timeout=60,
                            headers={"Authorization": f"Bearer {self.admin_key}"})


RAY_TEMP_DIR = f"/tmp/maas-test-ray-{RAY_PORT}"


def start_ray_head(env: dict) -> None:
    """A Ray head of the tests' own (own ports and temp dir), beside any cluster a developer runs."""
    done = subprocess.run([str(BIN / "ray"), "start", "--head", f"--port={RAY_PORT}",
                           f"--dashboard-port={DASHBOARD_PORT}", f"--temp-dir={RAY_TEMP_DIR}",
                           f"--ray-client-server-port={RAY_PORT + 1}", f"--dashboard-agent-listen-port={52400 + SLOT}",
                           f"--min-worker-port={30000 + 3000 * SLOT}", f"--max-worker-port={32999 + 3000 * SLOT}",
                           "--num-cpus=16", "--disable-usage-stats",
                           "--dashboard-host=127.0.0.1"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def stop_ray(env: dict) -> None:
    """Stop only the tests' cluster: `ray stop` would stop every Ray cluster on the machine."""
    import psutil

    roots = [p for p in psutil.process_iter(["cmdline"])
             if any(RAY_TEMP_DIR in arg or arg.endswith(f":{RAY_PORT}") for arg in p.info["cmdline"] or [])]
    victims = {p.pid: p for root in roots for p in [root, *root.children(recursive=True)]}
    for proc in victims.values():
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(list(victims.values()), timeout=30)


@pytest.fixture(scope="session")
def platform() -> Platform:
    cache = Path(os.environ.get("MAAS_TEST_CACHE", Path.home() / ".cache" / "maas-tests")) / "models"
    cache.mkdir(parents=True, exist_ok=True)
    home = Path(os.environ.get("MAAS_TEST_HOME") or tempfile.mkdtemp(prefix="maas-test-"))
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "models").exists():
        (home / "models").symlink_to(cache)
    admin_key = "admin-test-" + os.urandom(8).hex()
    database_url = f"sqlite:///{home / 'maas.db'}"
    if os.environ.get("MAAS_TEST_DATABASE") == "postgres":  # the same tests on a real PostgreSQL server
        from tests.pg import postgres_url

        database_url = postgres_url(f"maas_slot{SLOT}")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MAAS_"))} | {
        "MAAS_HOME": str(home), "MAAS_PORT": str(SERVE_PORT), "MAAS_ADMIN_KEY": admin_key,
        "MAAS_DATABASE_URL": database_url,
        "RAY_ADDRESS": f"127.0.0.1:{RAY_PORT}", "RAY_AUTH_MODE": "disabled", "PATH": f"{BIN}:{os.environ['PATH']}",
    }
    stop_ray(env)
    start_ray_head(env)
    up = subprocess.run([str(BIN / "maas"), "up"], env=env, capture_output=True, text=True, timeout=1500)
    if up.returncode != 0:
        stop_ray(env)
        pytest.fail(f"maas up failed:\n{up.stdout[-5000:]}\n{up.stderr[-5000:]}")
    yield Platform(home=home, env=env, base_url=f"http://127.0.0.1:{SERVE_PORT}", up_output=up.stdout,
                   admin_key=admin_key, database_url=database_url, up_stderr=up.stderr)
    stop_ray(env)
    if not os.environ.get("MAAS_TEST_HOME"):
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def api_key(platform) -> str:
    return platform.new_key("session")["key"]


@pytest.fixture(scope="session")
def client(platform, api_key) -> openai.OpenAI:
    return platform.client(api_key)


@pytest.fixture(scope="session")
def http(platform, api_key) -> httpx.Client:
    return httpx.Client(base_url=platform.base_url, timeout=120, headers={"Authorization": f"Bearer {api_key}"})
