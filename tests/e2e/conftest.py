"""One real platform per test session: a dedicated Ray head, `maas up`, real vLLM engines, SQLite (PostgreSQL
with MAAS_TEST_DATABASE=postgres).

The built models are cached across sessions (MAAS_TEST_CACHE, default ~/.cache/maas-tests) because
building tiny-chat takes minutes; the database and everything else are new for every session.

Tests that restart or otherwise disturb the shared platform carry `@pytest.mark.disruptive` and run at the
end of the session (pytest_collection_modifyitems below), whatever their module's name.

Tests marked `cluster` (`make test-cluster`) get the platform as the head of a cluster: MAAS_STORAGE apart from
MAAS_HOME (the models there), PostgreSQL as the database. Other tests read the models under MAAS_HOME, so the two
kinds never share a session: selected together, the cluster tests are deselected (with a warning).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from tests.helpers import BIN, RAY_PORT, SERVE_PORT, SLOT, start_ray_head, stop_ray
from serve_apps.settings import RAY_NODE_ENV


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Disruptive tests after the others, audits of the whole session last; each group in collection order."""
    def rank(item: pytest.Item) -> int:
        return 2 if item.get_closest_marker("audit") else 1 if item.get_closest_marker("disruptive") else 0

    items[:] = sorted(items, key=rank)  # stable: each group keeps its collection order
    cluster = [i for i in items if i.get_closest_marker("cluster")]
    if cluster and any(i.get_closest_marker("e2e") and not i.get_closest_marker("cluster") for i in items):
        config.hook.pytest_deselected(items=cluster)
        items[:] = [i for i in items if not i.get_closest_marker("cluster")]
        config.issue_config_time_warning(pytest.PytestWarning(
            f"deselected {len(cluster)} cluster test(s): they need a session of their own (make test-cluster)"), 2)


@dataclass
class Platform:
    home: Path
    env: dict
    base_url: str
    up_output: str
    admin_key: str
    database_url: str
    up_stderr: str = ""
    storage: Path | None = None  # MAAS_STORAGE, when the session runs cluster tests
    up_done_at: float = 0.0  # when `maas up` returned (epoch seconds)

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

    def new_project(self, prefix: str, **quotas) -> tuple[str, str]:
        """A project of its own (`<prefix>-<random>`, the quotas given set) and its first key: (id, secret)."""
        project = f"{prefix}-{os.urandom(4).hex()}"
        with self.admin() as admin:
            assert admin.post("/projects", json={"id": project}).status_code == 201
            key = admin.post(f"/{project}/keys", json={"label": "first", "description": "x"}).json()["key"]
            if quotas:
                view = admin.put(f"/projects/{project}/quotas", json=quotas).json()
                assert {name: view[name] for name in quotas} == quotas, view
        return project, key

    def client(self, key: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base_url + "/v1", api_key=key, max_retries=0, timeout=120)

    def admin(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url + "/api/v1", timeout=60,
                            headers={"Authorization": f"Bearer {self.admin_key}"})


@pytest.fixture(scope="session")
def platform(request, tmp_path_factory) -> Platform:
    cache = Path(os.environ.get("MAAS_TEST_CACHE", Path.home() / ".cache" / "maas-tests")) / "models"
    cache.mkdir(parents=True, exist_ok=True)
    root = Path(os.environ.get("MAAS_TEST_HOME") or tempfile.mkdtemp(prefix="maas-test-"))
    as_cluster = any(item.get_closest_marker("cluster") for item in request.session.items)
    # A cluster's head keeps its state in MAAS_HOME and what every node reads in MAAS_STORAGE.
    home, storage = (root / "head", root / "storage") if as_cluster else (root, None)
    home.mkdir(parents=True, exist_ok=True)
    store = storage or home
    store.mkdir(parents=True, exist_ok=True)
    if not (store / "models").exists():
        (store / "models").symlink_to(cache)
    admin_key = "admin-test-" + os.urandom(8).hex()
    database_url = f"sqlite:///{home / 'maas.db'}"
    if os.environ.get("MAAS_TEST_DATABASE") == "postgres" or as_cluster:  # a real PostgreSQL server
        from tests.pg import postgres_url

        database_url = postgres_url(f"maas_slot{SLOT}")
    temp = tmp_path_factory.getbasetemp()  # every tmp_path and tmp_path_factory folder of the session
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MAAS_"))} | {
        "MAAS_HOME": str(home), "MAAS_PORT": str(SERVE_PORT), "MAAS_ADMIN_KEY": admin_key,
        "MAAS_DATABASE_URL": database_url,
        # The tests' weights and datasets are in pytest's temp folders (a version may also be added from one in
        # the model store); their webhooks listen on 127.0.0.1, and they send X-Forwarded-For from there.
        "MAAS_IMPORT_ROOTS": os.pathsep.join([str(temp), str(cache.resolve())]), "MAAS_DATA_ROOTS": str(temp),
        "MAAS_WEBHOOK_ALLOW": "127.0.0.1", "MAAS_TRUSTED_PROXIES": "127.0.0.1",
        # A call waits 5 s at most for an engine replica (test_autoscaling sees a cold start's 503 without waiting
        # the 300 s default; every other test calls services that are Running).
        "MAAS_COLD_START_TIMEOUT_S": "5",
        "RAY_ADDRESS": f"127.0.0.1:{RAY_PORT}", "RAY_AUTH_MODE": "disabled", "PATH": f"{BIN}:{os.environ['PATH']}",
    } | ({"MAAS_STORAGE": str(storage)} if storage else {}) | RAY_NODE_ENV  # as `maas up` starts Ray
    stop_ray(env)
    start_ray_head(env)
    up = subprocess.run([str(BIN / "maas"), "up"], env=env, capture_output=True, text=True, timeout=1500)
    if up.returncode != 0:
        stop_ray(env)
        pytest.fail(f"maas up failed:\n{up.stdout[-5000:]}\n{up.stderr[-5000:]}")
    yield Platform(home=home, env=env, base_url=f"http://127.0.0.1:{SERVE_PORT}", up_output=up.stdout,
                   admin_key=admin_key, database_url=database_url, up_stderr=up.stderr, storage=storage,
                   up_done_at=time.time())
    stop_ray(env)
    if not os.environ.get("MAAS_TEST_HOME"):
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def api_key(platform) -> str:
    return platform.new_key("session")["key"]


@pytest.fixture(scope="session")
def client(platform, api_key) -> openai.OpenAI:
    return platform.client(api_key)


@pytest.fixture(scope="session")
def http(platform, api_key) -> httpx.Client:
    return httpx.Client(base_url=platform.base_url, timeout=120, headers={"Authorization": f"Bearer {api_key}"})
