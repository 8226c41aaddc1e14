"""The settings both planes read, from the environment once (pydantic-settings).

The control plane's `cluster.settings.Settings` extends these; the data plane (engines, moderation, the
gateway) may not import `cluster`, so what it needs lives here.
"""

from __future__ import annotations

import ipaddress
import shutil
import sys
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Accelerator = Literal["cpu", "cuda", "npu"]


class PlaneSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MAAS_", extra="ignore")

    home: Path = Field(Path.home() / ".maas", description="State: the SQLite file, models, credentials, logs.")
    storage: Path | None = Field(None, description="Shared storage every node mounts (NFS, CephFS, a RWX volume): "
                                                   "models, my-model versions, datasets, checkpoints and "
                                                   "compression outputs. Default: MAAS_HOME (one machine).")
    accelerator: Accelerator = Field("cpu", description="Placement of engine replicas.")
    moderation_terms: str = Field("", description="Comma-separated terms the built-in moderator flags.")
    moderation_terms_file: Path | None = Field(None, description="More terms, one a line (default: "
                                                                 "$MAAS_HOME/moderation_terms.txt).")
    moderator: str | None = Field(None, description="module:Class of another moderator.")
    trusted_proxies: str = Field("", description="Peers (IPs or networks, comma-separated) whose X-Forwarded-For "
                                                 "header is believed; none by default.")
    metrics_token: str | None = Field(None, description="A bearer token that may read /metrics (besides the "
                                                        "admin key), for a Prometheus scraper.")
    cache_salt_secret: SecretStr | None = Field(None, description=(
        "The secret each project's vLLM cache_salt is derived from (serve_apps.tenancy); the same on every node, so "
        "a project's calls share their prefix cache through any gateway replica. Unset: a random one per process."))
    accounting_shards: int = Field(1, ge=1, le=256, description=(
        "Accounting actors that admissions and settlements are sharded over, by project (every limit is per "
        "project, so each stays exact in its shard). Set the same value everywhere the platform runs."))
    cold_start_timeout_s: float = Field(300.0, gt=0, le=3600, description=(
        "How long a call waits for an engine replica to take it (a service scaled to zero starts its first "
        "one; every replica busy at its max ongoing requests) before the 503 MaaS.0503. Under the OpenAI "
        "SDK's 600 s default timeout, so clients get the platform's answer rather than their own timeout."))

    serve_grpc: bool = Field(True, description=(
        "The gateway calls engine deployments over Serve's inter-deployment gRPC servers (a handle's "
        "`_by_reference=False`), not as Ray actor calls that make every streamed item a Ray object: less CPU "
        "per streamed token in the gateway (benchmarks/stream_cpu.py). Off: Ray actor calls, as before."))
    direct_streams: bool = Field(True, description=(
        "A streamed answer goes from the engine replica to the gateway over a TCP connection of its own after "
        "its first batch (serve_apps.direct_stream), not as one Ray object per batch. Off: every batch through "
        "Serve (for nodes that cannot reach each other on free ports)."))

    @field_validator("home", "storage")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        return value.expanduser().resolve() if value is not None else None

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: str) -> str:
        hosts, _networks = hosts_and_networks(value)
        if hosts:
            raise ValueError(f"MAAS_TRUSTED_PROXIES takes IP addresses or networks, not {sorted(hosts)}")
        return value

    @cached_property
    def trusted_proxy_networks(self) -> list:
        return hosts_and_networks(self.trusted_proxies)[1]

    @property
    def storage_dir(self) -> Path:
        """Where everything a replica or a worker on another node reads lives (MAAS_STORAGE or MAAS_HOME)."""
        return self.storage or self.home

    @property
    def models_dir(self) -> Path:
        return self.storage_dir / "models"


def hosts_and_networks(text: str) -> tuple[set[str], list]:
    """A comma-separated list of IP addresses or networks (as networks) and host names (lower-cased)."""
    hosts, networks = set(), []
    for item in (i.strip() for i in text.split(",")):
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            hosts.add(item.lower())
    return hosts, networks


# What every Ray node of the platform starts with (`maas up`'s head, `maas join`, the tests' and the benchmarks'
# clusters; ray_configs/kuberay sets the same): Serve's processes read it once, when they start.
# - RAY_SERVE_ENABLE_HA_PROXY=1: HAProxy listens on the platform's port and forwards each call to a gateway
#   replica's own port (Serve's direct ingress): no proxy actor on the path. RAY_SERVE_HAPROXY_BINARY_PATH starts
#   it through `maas-haproxy` (serve_apps.haproxy_peer), which adds the caller's address (X-Maas-Peer) that Ray's
#   configuration leaves out. An environment that sets RAY_SERVE_ENABLE_HA_PROXY=0 gets Serve's proxy actor.
# - FORWARDED_ALLOW_IPS="": uvicorn (the proxy's, a direct-ingress replica's) leaves X-Forwarded-For alone (it would
#   trust 127.0.0.1 and rewrite the peer); the gateway believes it only from MAAS_TRUSTED_PROXIES.
# - RAY_SERVE_PROXY_USE_GRPC=1: with the proxy actor, it hands calls to the gateway over Serve's inter-deployment
#   gRPC, not as Ray actor calls (every streamed ASGI message a Ray object); with MAAS_SERVE_GRPC it took 6% and
#   28% of the CPU per streamed token off the path in two runs (benchmarks/RESULTS.md).
# - RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD=0, RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP=0,
#   RAY_SERVE_FREEZE_GC_ON_STARTUP=1: a replica runs its deployment's code and its handles' router on its own event
#   loop (not a thread and a loop of their own each, with a hop between loops per call and per streamed item), and
#   freezes the objects of its start-up out of the GC's scans. Three settings of Ray's "throughput optimized" mode
#   (RAY_SERVE_THROUGHPUT_OPTIMIZED), without its log settings: a buffer of 1,000 access-log lines flushed only
#   when full would hide a quiet replica's warnings. The platform's blocking work runs in threads of its own (the
#   reconciler, asyncio.to_thread), so one loop serves. benchmarks/RESULTS.md, serving_overhead run 11.
# The defaults yield to an environment that sets them.
_BESIDE_PYTHON = Path(sys.executable).parent / "maas-haproxy"  # this venv's, before another one on PATH
HAPROXY_WRAPPER = str(_BESIDE_PYTHON if _BESIDE_PYTHON.exists() else shutil.which("maas-haproxy") or _BESIDE_PYTHON)
_NODE_DEFAULTS = {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_HAPROXY_BINARY_PATH": HAPROXY_WRAPPER,
                  "RAY_SERVE_PROXY_USE_GRPC": "1", "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
                  "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
                  "RAY_SERVE_FREEZE_GC_ON_STARTUP": "1"}  # unless the environment sets them
_NODE_FORCED = {"FORWARDED_ALLOW_IPS": ""}  # whatever the environment says
RAY_NODE_ENV = _NODE_DEFAULTS | _NODE_FORCED


def ray_node_env(base: dict[str, str]) -> dict[str, str]:
    """`base` (an environment) with RAY_NODE_ENV: FORWARDED_ALLOW_IPS always, the others unless `base` sets them."""
    return _NODE_DEFAULTS | base | _NODE_FORCED


@lru_cache(maxsize=1)
def plane_settings() -> PlaneSettings:
    return PlaneSettings()
