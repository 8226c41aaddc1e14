"""What several test modules share (not a conftest: tests import from here, never from a conftest or from
another test module): the tests' own Ray cluster (ports, temp dir, start and stop; a second node for the cluster
tests), waiting for a service's status, and the database backends the db tier runs on."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# MAAS_TEST_SLOT=N moves every port of the tests' cluster, so two test sessions can run side by side.
SLOT = int(os.environ.get("MAAS_TEST_SLOT", "0"))
RAY_PORT, DASHBOARD_PORT, SERVE_PORT = 6390 + 10 * SLOT, 8275 + 10 * SLOT, 8380 + 10 * SLOT
RAY_TEMP_DIR = f"/tmp/maas-test-ray-{RAY_PORT}"


def start_ray_head(env: dict) -> None:
    """A Ray head of the tests' own (own ports and temp dir), beside any cluster a developer runs."""
    env = env | {"PATH": os.pathsep.join([str(BIN), env.get("PATH", "")])}  # as `maas up` starts Ray
    done = subprocess.run([str(BIN / "ray"), "start", "--head", f"--port={RAY_PORT}",
                           f"--dashboard-port={DASHBOARD_PORT}", f"--temp-dir={RAY_TEMP_DIR}",
                           f"--ray-client-server-port={RAY_PORT + 1}", f"--dashboard-agent-listen-port={52400 + SLOT}",
                           f"--min-worker-port={30000 + 3000 * SLOT}", f"--max-worker-port={32999 + 3000 * SLOT}",
                           "--num-cpus=16", "--disable-usage-stats",
                           "--dashboard-host=127.0.0.1"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def _processes_and_children(matches) -> list:
    """The processes whose command line has an argument `matches(arg)` accepts, and all their children."""
    import psutil

    roots = [p for p in psutil.process_iter(["cmdline"]) if any(map(matches, p.info["cmdline"] or []))]
    return list({p.pid: p for root in roots for p in [root, *root.children(recursive=True)]}.values())


def _kill(victims: list) -> None:
    import psutil

    for proc in victims:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(victims, timeout=30)


def stop_ray(env: dict) -> None:
    """Stop only the tests' cluster: `ray stop` would stop every Ray cluster on the machine."""
    _kill(_processes_and_children(lambda arg: RAY_TEMP_DIR in arg or arg.endswith(f":{RAY_PORT}")))


# -- a second Ray node on this machine (tests/e2e/test_two_nodes.py) --------------------------------------------
# Its own ports (RAY_PORT + 3..7 are free in every slot's block of 10) and temp dir (under RAY_TEMP_DIR's name, so
# stop_ray ends it too).
WORKER_TEMP_DIR = f"{RAY_TEMP_DIR}-worker"
WORKER_PORTS = {"node-manager-port": RAY_PORT + 3, "object-manager-port": RAY_PORT + 4,
                "metrics-export-port": RAY_PORT + 5, "runtime-env-agent-port": RAY_PORT + 6,
                "dashboard-agent-grpc-port": RAY_PORT + 7, "dashboard-agent-listen-port": 52420 + SLOT,
                "min-worker-port": 20000 + 1000 * SLOT, "max-worker-port": 20999 + 1000 * SLOT}


def start_worker_node(env: dict, private_home: Path, resources: dict[str, float], num_cpus: int) -> None:
    """`ray start --address` in a mount namespace of its own (root and util-linux's unshare needed), where a
    private empty directory is bind-mounted over MAAS_HOME: the node sees the head's MAAS_STORAGE and nothing
    of its MAAS_HOME, as a machine of its own would."""
    import json
    import shlex

    private_home.mkdir(parents=True, exist_ok=True)
    env = env | {"PATH": os.pathsep.join([str(BIN), env.get("PATH", "")])}  # as `maas join` starts Ray
    command = [str(BIN / "ray"), "start", f"--address=127.0.0.1:{RAY_PORT}", f"--temp-dir={WORKER_TEMP_DIR}",
               f"--num-cpus={num_cpus}", f"--resources={json.dumps(resources)}", "--disable-usage-stats",
               *(f"--{name}={port}" for name, port in WORKER_PORTS.items())]
    script = (f"mount --bind {shlex.quote(str(private_home))} {shlex.quote(env['MAAS_HOME'])} && "
              + " ".join(map(shlex.quote, command)))
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def worker_node_processes() -> list:
    """The worker node's processes: the daemons `ray start` left (they name its temp dir) and their children."""
    return _processes_and_children(lambda arg: WORKER_TEMP_DIR in arg)


def stop_worker_node() -> None:
    _kill(worker_node_processes())


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def actor_pids(env: dict, class_prefix: str) -> list[int]:
    """The pids of the live actors of the tests' own cluster whose class name starts with `class_prefix`."""
    import json

    done = subprocess.run([str(BIN / "ray"), "list", "actors", "-f", "state=ALIVE", "--format", "json", "--limit",
                           "1000", "--address", f"http://127.0.0.1:{DASHBOARD_PORT}"],
                          env=env, capture_output=True, text=True, timeout=60, check=False)
    return [int(a["pid"]) for a in json.loads(done.stdout or "[]") if a.get("class_name", "").startswith(class_prefix)]


def wait_for(predicate, timeout: float, what: str, interval: float = 0.5):
    """Poll `predicate()` until it returns something truthy (returned) or `timeout` seconds pass: then the test
    fails naming `what` and the last value seen. The tests' way to wait for a condition, never a fixed sleep."""
    deadline, value = time.time() + timeout, None
    while True:
        value = predicate()
        if value:
            return value
        if time.time() > deadline:
            pytest.fail(f"not within {timeout:g} s: {what} (last seen: {value!r})")
        time.sleep(interval)


def required(env_var: str, reason: str) -> None:
    """A test's requirement that is missing: a failure where CI asks for it (`env_var`=1, .ci/run), else a skip."""
    if os.environ.get(env_var) == "1":
        pytest.fail(f"{reason} ({env_var}=1: required here)", pytrace=False)
    pytest.skip(reason)


def forbid_ray_init(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast tiers run without a Ray cluster: any ray.init there (direct, or a Ray API's auto-init) fails."""
    import ray
    import ray._private.worker

    def refuse(*_args, **_kwargs):
        raise AssertionError("ray.init in the fast tier (tests/unit, tests/db): a test that needs Ray lives in "
                             "tests/e2e")

    monkeypatch.setattr(ray, "init", refuse)
    monkeypatch.setattr(ray._private.worker, "init", refuse)


def replica_pids(env: dict, app: str) -> list[int]:
    """The pids of a Serve application's live replicas in the tests' own cluster."""
    return actor_pids(env, f"ServeReplica:{app}:")


def engine_connections(gateways: list[int], engines: list[int]) -> set[tuple[int, int, int]]:
    """(gateway pid, its local port, engine pid) of every established TCP connection from a gateway replica to a
    port an engine replica listens on: Ray's own, and one per stream after its first batch
    (serve_apps.direct_stream)."""
    import psutil

    listening = {c.laddr.port: pid for pid in engines for c in psutil.Process(pid).net_connections("tcp")
                 if c.status == psutil.CONN_LISTEN}
    return {(pid, c.laddr.port, listening[c.raddr.port]) for pid in gateways
            for c in psutil.Process(pid).net_connections("tcp")
            if c.status == psutil.CONN_ESTABLISHED and c.raddr and c.raddr.port in listening}


def serve_replicas(app: str) -> list[dict]:
    """Serve's own view of an application's replicas (state, pid, ...), from the tests' cluster's dashboard."""
    import httpx

    apps = httpx.get(f"http://127.0.0.1:{DASHBOARD_PORT}/api/serve/applications/", timeout=30).json()["applications"]
    return [r for d in apps[app]["deployments"].values() for r in d["replicas"]]


def long_stream(max_tokens: int) -> dict:
    """The arguments of a chat call streamed to exactly `max_tokens` tokens, with its usage at the end."""
    return {"max_tokens": max_tokens, "stream": True, "stream_options": {"include_usage": True},
            "extra_body": {"ignore_eos": True}}


class StreamReader(threading.Thread):
    """An openai chat stream (long_stream's) read to its end on a thread of its own: when each chunk arrived,
    how it finished, the usage of its last chunk."""

    def __init__(self, stream):
        super().__init__(daemon=True)
        self.stream, self.arrivals, self.finish_reasons, self.usage, self.error = stream, [], [], None, None
        self.start()

    def run(self) -> None:
        try:
            for chunk in self.stream:
                self.arrivals.append(time.time())
                if chunk.choices and chunk.choices[0].finish_reason:
                    self.finish_reasons.append(chunk.choices[0].finish_reason)
                self.usage = chunk.usage or self.usage
        except Exception as exc:  # noqa: BLE001  (whole() shows it)
            self.error = repr(exc)

    def whole(self, max_tokens: int) -> bool:
        """Ended as asked: one finish, for length, with all `max_tokens` tokens."""
        self.join(300)
        assert not self.is_alive() and self.error is None, self.error
        assert self.finish_reasons == ["length"] and self.usage.completion_tokens == max_tokens, (
            self.finish_reasons, self.usage)
        return True


def wait_status(platform, service: str, statuses: set[str], timeout: float = 420, project: str = "default") -> dict:
    """Poll a model service (id or name) until its status is one of `statuses`; its view then."""
    deadline, view = time.time() + timeout, None
    with platform.admin() as admin:
        while time.time() < deadline:
            response = admin.get(f"/{project}/services/{service}")
            view = response.json()
            if response.status_code == 200 and view["status"] in statuses:
                return view
            time.sleep(1)
    pytest.fail(f"service {service} did not reach {statuses} in {timeout} s: {view}")


# -- the db tier's backends -------------------------------------------------------------------------------
def postgres_enabled() -> bool:
    """PostgreSQL runs when asked for: MAAS_TEST_DATABASE=postgres (make test's second pass), a server of the
    caller's own (MAAS_TEST_POSTGRES_URL), or MAAS_REQUIRE_POSTGRES=1. Otherwise the db tier is SQLite only."""
    return (os.environ.get("MAAS_TEST_DATABASE") == "postgres" or bool(os.environ.get("MAAS_TEST_POSTGRES_URL"))
            or os.environ.get("MAAS_REQUIRE_POSTGRES") == "1")


# Parameters of a fixture that gives a database URL: the postgresql one carries the `postgres` marker, which
# tests/conftest.py turns into a skip unless postgres_enabled().
DATABASES = [pytest.param("sqlite", id="sqlite"),
             pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres)]


# -- my models (tests/db/test_my_models.py, tests/e2e/test_my_models.py) -----------------------------------
STRUCTURE_ERROR = {"error_code": "Modelarts.6206",
                   "error_msg": "Key fields describing the model structure are missing from config.json, or "
                                "their values are inconsistent with standard open source"}


def lora_adapter(folder: Path, **changes) -> Path:
    """A LoRA adapter folder as peft writes it (the checks read adapter_config.json only)."""
    import json

    folder.mkdir(parents=True)
    config = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"],
              "base_model_name_or_path": "tiny-chat"} | changes
    (folder / "adapter_config.json").write_text(json.dumps(config))
    (folder / "adapter_model.safetensors").write_bytes(b"\0" * 64)
    return folder


# -- races (tests/db) ------------------------------------------------------------------------------------
def race(count: int, create) -> list[str]:
    """Run `create(i)` for i in range(count) on as many threads at once; each outcome: "ok" or the code of the
    PlatformError that refused it."""
    import threading

    from serve_apps.errors import PlatformError

    start, outcomes = threading.Barrier(count), []

    def one(i: int) -> None:
        start.wait()
        try:
            create(i)
            outcomes.append("ok")
        except PlatformError as exc:
            outcomes.append(exc.spec.code)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return outcomes
