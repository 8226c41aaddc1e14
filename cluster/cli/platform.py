"""Start, stop and inspect the platform on a Ray cluster: the logic behind `maas up|down|status`.

`up` deploys exactly the applications of `ray_configs/maas.yaml` (the file `serve deploy` takes), so
both ways of running the platform give the same thing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from cluster.runtime import nodes
from cluster.settings import get_settings
from serve_apps.contract import ACCOUNTING_ACTOR, NAMESPACE
from serve_apps.settings import ray_node_env

LOGICAL_CPUS = 16  # Ray CPUs are logical: engines take one each, light deployments none


class StartupError(Exception):
    pass


@dataclass
class UpResult:
    base_url: str
    dashboard_url: str
    seconds: float
    models: list[str] = field(default_factory=list)
    new_admin_key: str | None = None


RAY_ENV_FILE = "ray_env.json"


def shell_env() -> dict[str, str]:
    """What a shell needs so that Ray's own commands (`ray job submit`, `serve deploy`, `serve status`) reach the
    cluster `maas up` started, and a job's `python` is the platform's: printed by `maas env`."""
    settings = get_settings()
    try:
        found = json.loads((settings.home / RAY_ENV_FILE).read_text())
    except (OSError, ValueError):
        found = {}
    dashboard = found.get("dashboard") or "http://127.0.0.1:8265"
    return {
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), "$PATH"]),
        "MAAS_HOME": str(settings.home),
        "RAY_AUTH_MODE": found.get("auth_mode") or "token",  # Ray's CLIs read ~/.ray/auth_token in token mode
        "RAY_API_SERVER_ADDRESS": dashboard,  # ray job submit / status / logs
        "RAY_DASHBOARD_ADDRESS": dashboard,  # serve deploy / status / config
        "MAAS_COMPRESS_PYTHON": str(settings.compress_python),
    }


def ensure_ray_token() -> None:
    """In token mode `ray start --head` refuses to start without a token (`ray.init`, which `maas up` uses, makes
    one): make Ray's own default token (~/.ray/auth_token) when there is none, so the README's `ray start` block
    runs as written after `maas env`."""
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return
    if not (Path.home() / ".ray" / "auth_token").exists():
        from ray._private.authentication.authentication_token_setup import generate_and_save_token

        generate_and_save_token()


def load_serve_config() -> dict:
    return yaml.safe_load(Path(get_settings().serve_config).read_text())


def _ray_bin() -> str:
    return shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"


def _connect(console: Console) -> str:
    """Join RAY_ADDRESS or a running local cluster; start a local head if there is none. Returns the
    dashboard URL."""
    import ray

    settings = get_settings()
    address = settings.ray_address or "auto"
    try:
        return _dashboard(ray.init(address=address, namespace=NAMESPACE, logging_level="ERROR",
                                   log_to_driver=False))
    except (ConnectionError, RuntimeError):
        if settings.ray_address:
            raise StartupError(f"cannot reach the Ray cluster at RAY_ADDRESS={settings.ray_address}") from None
    settings.logs_dir.mkdir(parents=True, exist_ok=True)
    if not os.environ.get("RAY_AUTH_MODE"):
        # Ray starts a head without authentication unless a token already exists: its dashboard (job submission)
        # and Serve's gRPC ports would run any caller's code. Token mode always, unless the environment says.
        ensure_ray_token()
        os.environ["RAY_AUTH_MODE"] = "token"
        from ray._private.authentication.authentication_token_setup import _enable_token_auth

        _enable_token_auth()  # this process read the mode already (the join attempt above): read it again
    if not os.environ.get("MAAS_CACHE_SALT_SECRET"):  # one secret for every replica of this cluster
        from cluster.auth import cache_salt_secret

        os.environ["MAAS_CACHE_SALT_SECRET"] = cache_salt_secret(settings.home)
    # RAY_NODE_ENV: what Serve must start with (HAProxy through maas-haproxy, X-Forwarded-For left alone, ...).
    # The venv's bin first on the workers' PATH: a job's `python` (`ray job submit -- python -m ...`) is then
    # the platform's python, with torch and the job code, whatever the submitting shell has activated.
    env = ray_node_env(dict(os.environ) | {
        "MAAS_HOME": str(settings.home),
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])})
    with console.status("Starting a local Ray head..."):
        done = subprocess.run([_ray_bin(), "start", "--head", f"--num-cpus={LOGICAL_CPUS}",
                               "--disable-usage-stats", "--dashboard-host=127.0.0.1"],
                              env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise StartupError(f"`ray start --head` failed:\n{done.stdout}\n{done.stderr}")
    (settings.home / "ray_started_by_maas").write_text(str(time.time()))
    return _dashboard(ray.init(address="auto", namespace=NAMESPACE, logging_level="ERROR", log_to_driver=False))


def _dashboard(context) -> str:
    url = context.dashboard_url or ""
    return url if url.startswith("http") else f"http://{url}" if url else "(dashboard not running)"


def deploy(console: Console) -> list[str]:
    """serve.run every application of the YAML, without blocking. Returns the model application names."""
    from ray import serve
    from ray.serve.api import RunTarget

    from serve_apps.ray_compat import import_attr

    config = load_serve_config()
    http = config.get("http_options", {})
    settings = get_settings()
    serve.start(http_options={"host": settings.host or http.get("host"), "port": settings.port},
                proxy_location=settings.proxy_location or config.get("proxy_location", "HeadOnly"))
    targets = [RunTarget(target=import_attr(a["import_path"])(a.get("args") or {}), name=a["name"],
                         route_prefix=a.get("route_prefix")) for a in config["applications"]]
    _quiet_driver_logs()  # the engines' and the gateway's modules import ray.serve.llm, which resets the root logger
    # Deploy all at once and let the caller show progress, instead of waiting app by app.
    serve.run_many(targets, wait_for_ingress_deployment_creation=False, wait_for_applications_running=False)
    return [a["name"] for a in config["applications"] if a.get("route_prefix") is None]


def _wait_running(console: Console, names: list[str], deadline: float) -> None:
    from ray import serve

    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[state]}"),
                  TimeElapsedColumn(), console=console, transient=False) as progress:
        tasks = {n: progress.add_task(f"{n:<18}", total=1, state="deploying") for n in names}
        while True:
            apps = serve.status().applications
            pending = 0
            for name, task in tasks.items():
                state = apps[name].status.value if name in apps else "NOT_STARTED"
                progress.update(task, state=state.lower(), completed=1 if state == "RUNNING" else 0)
                if state in ("DEPLOY_FAILED", "UNHEALTHY"):
                    raise StartupError(f"application {name} failed: {apps[name].message}")
                pending += state != "RUNNING"
            if not pending:
                return
            if time.time() > deadline:
                raise StartupError("timed out waiting for the applications; see `maas status` and the Ray logs")
            time.sleep(1)


def _probe_models(base_url: str, models: list[str], deadline: float) -> None:
    """Every model answers a real request through the gateway, with a throw-away key."""
    from cluster.cli.client import ControlPlaneClient

    client = ControlPlaneClient(get_settings())
    label = f"maas-up-probe-{int(time.time())}"
    created = client.call("POST", "/default/keys", json={"label": label, "description": "maas up readiness probe"})
    headers = {"Authorization": f"Bearer {created['key']}"}
    try:
        for model in models:
            card = next(c for c in client.call("GET", "/models") if c["id"] == model)
            if "text-generation" in card["types"]:
                path, body = "/v1/chat/completions", {"model": model, "max_tokens": 4,
                                                      "messages": [{"role": "user", "content": "hi"}]}
            else:
                path, body = "/v1/embeddings", {"model": model, "input": "hi"}
            while True:
                response = httpx.post(base_url + path, json=body, headers=headers, timeout=60)
                if response.status_code == 200:
                    break
                if time.time() > deadline:
                    raise StartupError(f"{model} did not answer: {response.status_code} {response.text[:300]}")
                time.sleep(1)
    finally:
        client.call("DELETE", f"/default/keys/{created['id']}")


def _quiet_driver_logs() -> None:
    """`maas up` shows its own progress. Importing ray.serve.llm points the root logger at Ray's JSON formatter
    at INFO, so every httpx request, Alembic step and vLLM notice of this process reached the console: keep
    warnings only, as plain text (the platform's own processes log as before)."""
    import logging

    logging.getLogger("vllm").setLevel(logging.ERROR)  # import-time notices (no Triton on CPU, ...)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # the "Deployment Options" dumps


def up(console: Console, timeout_s: int = 600) -> UpResult:
    _quiet_driver_logs()
    from cluster.app import prepare
    from cluster.auth import save_credentials
    from serve_apps.catalog import builtin, ensure_built

    _quiet_driver_logs()  # again: the imports above may have configured the root logger
    start = time.time()
    settings = get_settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    names = [a["name"] for a in load_serve_config()["applications"]]
    model_apps = [a["name"] for a in load_serve_config()["applications"] if a.get("route_prefix") is None]
    for model in model_apps:
        with console.status(f"Preparing {model} (built once, then reused)..."):
            ensure_built(builtin(model), settings.models_dir)
    new_admin_key = prepare(model_apps)
    if new_admin_key:
        save_credentials(settings.credentials_file, new_admin_key)
    dashboard = _connect(console)
    try:
        nodes.check_database(settings.database_url, nodes.alive_nodes())
    except nodes.ClusterUnsupported as exc:
        raise StartupError(str(exc)) from None
    # For `maas env`: how Ray's own commands reach this cluster (Ray's default auth is token; a cluster
    # started with RAY_AUTH_MODE=disabled, as the tests' is, must be called without one).
    (settings.home / RAY_ENV_FILE).write_text(json.dumps(
        {"dashboard": dashboard, "auth_mode": os.environ.get("RAY_AUTH_MODE") or "token"}))
    deploy(console)
    deadline = start + timeout_s
    _wait_running(console, names, deadline)
    base_url = f"http://{settings.host}:{settings.port}"
    with console.status("Waiting for every model to answer..."):
        _probe_models(base_url, model_apps, deadline)
    return UpResult(base_url=base_url, dashboard_url=dashboard, seconds=time.time() - start, models=model_apps,
                    new_admin_key=new_admin_key)


def join(console: Console, address: str, resources: str = "", num_cpus: int | None = None,
         num_gpus: int | None = None) -> None:
    """Start a Ray worker node on this machine in the platform's cluster (`ray start --address`), with the venv
    first on the workers' PATH and this shell's MAAS_* settings (MAAS_STORAGE must be the same mount)."""
    settings = get_settings()
    if settings.storage is None:
        console.print("[yellow]MAAS_STORAGE is not set: engines and training workers on this node will look for "
                      "models and datasets under its own MAAS_HOME.[/yellow]")
    command = [_ray_bin(), "start", f"--address={address}", "--disable-usage-stats"]
    if resources:
        try:
            json.loads(resources)
        except ValueError:
            raise StartupError(f"--resources must be a JSON object, e.g. '{{\"maas-gpu\": 1}}', not {resources!r}")
        command.append(f"--resources={resources}")
    command += [f"--num-cpus={num_cpus}"] if num_cpus is not None else [f"--num-cpus={LOGICAL_CPUS}"]
    command += [f"--num-gpus={num_gpus}"] if num_gpus is not None else []
    env = ray_node_env(dict(os.environ) | {
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])})
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise StartupError(f"`ray start --address {address}` failed:\n{done.stdout}\n{done.stderr}")
    console.print(f"Joined the Ray cluster at {address} as a worker node.")


def down(console: Console, keep_ray: bool = False) -> None:
    import ray
    from ray import serve

    settings = get_settings()
    marker = settings.home / "ray_started_by_maas"
    try:
        ray.init(address=settings.ray_address or "auto", namespace=NAMESPACE, logging_level="ERROR",
                 log_to_driver=False)
    except (ConnectionError, RuntimeError):
        console.print("No Ray cluster is running.")
        marker.unlink(missing_ok=True)
        return
    with console.status("Stopping the Serve applications..."):
        serve.shutdown()
        for name in ray.util.list_named_actors():  # every accounting shard, whatever MAAS_ACCOUNTING_SHARDS says now
            if name == ACCOUNTING_ACTOR or name.startswith(f"{ACCOUNTING_ACTOR}-"):
                try:
                    ray.kill(ray.get_actor(name, namespace=NAMESPACE), no_restart=True)
                except ValueError:
                    pass
    ray.shutdown()
    console.print("Stopped the MaaS applications.")
    if marker.exists() and not keep_ray:
        subprocess.run([_ray_bin(), "stop", "--force"], capture_output=True)
        marker.unlink(missing_ok=True)
        console.print("Stopped the Ray cluster that `maas up` started.")


def _name(value) -> str:
    return getattr(value, "value", value)


def status() -> dict:
    import ray
    from ray import serve

    settings = get_settings()
    try:
        ray.init(address=settings.ray_address or "auto", namespace=NAMESPACE, logging_level="ERROR",
                 log_to_driver=False)
    except (ConnectionError, RuntimeError):
        return {"applications": {}}
    report = {"applications": {}}
    for name, application in serve.status().applications.items():
        report["applications"][name] = {
            "status": _name(application.status),
            "message": application.message,
            "deployments": {
                dep_name: {"status": _name(dep.status),
                           "replicas": {_name(state): n for state, n in dep.replica_states.items() if n}}
                for dep_name, dep in application.deployments.items()
            },
        }
    return report
