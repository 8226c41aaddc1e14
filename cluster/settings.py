"""The control plane's settings: one pydantic-settings `Settings`, read from the environment once.

It extends the settings the data plane reads too (`serve_apps.settings.PlaneSettings`: MAAS_HOME,
MAAS_ACCELERATOR, moderation), so both planes derive every path the same way.
"""

from __future__ import annotations

import os
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, model_validator

from serve_apps.settings import PlaneSettings, hosts_and_networks

REPO_ROOT = Path(__file__).resolve().parents[1]
GATEWAY_APP = "maas-gateway"
CONTROL_APP = "maas-control"


class Settings(PlaneSettings):
    database_url: str = Field("", description="Any SQLAlchemy URL; default: SQLite in MAAS_HOME.")
    host: str = Field("127.0.0.1", description="Where Serve's HTTP proxy listens (maas up).")
    port: int = 8000
    usage_retention_days: int = Field(180, ge=1, le=36500, description="Usage records older than this are deleted "
                                                                        "(checked hourly by the accounting actor).")
    proxy_location: Literal["HeadOnly", "EveryNode", "Disabled"] | None = Field(
        None, description="Where Serve runs HTTP proxies (maas up; default: the serve config's, HeadOnly). "
                          "EveryNode with MAAS_HOST=0.0.0.0 on a cluster behind a load balancer.")
    serve_config: Path = Field(REPO_ROOT / "ray_configs" / "maas.yaml",
                               description="The applications `maas up` deploys (the file `serve deploy` takes).")
    url: str | None = Field(None, description="The platform's base URL for the CLI (default http://host:port).")
    admin_key: str | None = Field(None, description="The admin key to create on first start.")
    ray_address: str | None = Field(None, validation_alias=AliasChoices("RAY_ADDRESS", "MAAS_RAY_ADDRESS"),
                                    description="Join this Ray cluster instead of starting one.")
    data_roots: str = Field("", description="Directories (separated by ':') whose files a fine-tuning job may name "
                                            "as its dataset by path; none by default: datasets are uploads.")
    import_roots: str = Field("", description="Directories (separated by ':') my-model weights may be imported "
                                              "from by path; none by default.")
    quota_services: int = Field(10, gt=0, description="Default per-project quota: model services.")
    quota_instances: int = Field(16, gt=0, description="Default per-project quota: engine instances over all "
                                                       "the project's running services.")
    quota_workers: int = Field(4, gt=0, description="Default per-project quota: Ray Train workers of one job.")
    quota_models: int = Field(20, gt=0, description="Default per-project quota: my models.")
    quota_batch_size: int = Field(1024, gt=0, description="Default per-project quota: a job's global batch size.")
    quota_seq_len: int = Field(8192, gt=0, description="Default per-project quota: a job's sequence length.")
    quota_model_disk_mb: int = Field(102_400, gt=0, description="Default per-project quota: MiB of my models' "
                                                                "weights, all versions together.")
    quota_jobs: int = Field(4, gt=0, description="Default per-project quota: active tuning and compression jobs "
                                                 "together (each holds a Ray Job's driver and its workers).")
    job_driver_cpus: float = Field(1.0, gt=0, description="CPUs a job's Ray Job driver asks for: it is scheduled "
                                                          "like a task, on a node with room, never on a head "
                                                          "started with no CPUs.")
    job_driver_memory_mb: int = Field(1024, gt=0, description="Memory (Ray's logical resource) a tuning job's "
                                                              "driver asks for (its workers ask for their own).")
    compress_driver_memory_mb: int = Field(2048, gt=0, description="Memory a compression job's driver asks for: "
                                                                   "the compression runs in the driver.")
    quota_storage_mb: int = Field(204_800, gt=0, description="Default per-project quota: MiB of storage over "
                                                             "dataset uploads, job outputs and my models' versions.")
    quota_datasets: int = Field(100, gt=0, description="Default per-project quota: dataset uploads kept.")
    max_upload_mb: int = Field(1024, gt=0, description="The largest dataset file an upload may send.")
    max_large_bodies: int = Field(4, gt=0, description="Request bodies over 1 MiB (dataset uploads) one control "
                                                       "plane replica reads at once; more are answered 503.")
    dataset_expiry_days: int = Field(30, gt=0, description="An upload no job has named for this many days (and "
                                                           "that no job may still read) is deleted.")
    dataset_max_rows: int = Field(1_000_000, gt=0, description="The most lines (JSON Lines), elements (a JSON "
                                                               "array) or rows (csv, xlsx) of a dataset.")
    dataset_max_unpacked_mb: int = Field(1024, gt=0, description="The most an xlsx dataset may unpack to.")
    dataset_check_memory_mb: int = Field(1024, ge=256, description="The address space of the child process that "
                                                                   "validates a dataset for the control plane.")
    dataset_check_timeout_s: int = Field(600, gt=0, description="How long validating a dataset may take.")
    webhook_allow: str = Field("", description="Hosts or networks (comma-separated, e.g. 127.0.0.1,10.0.0.0/8) a "
                                               "webhook may reach although they are not public addresses.")
    compress_python: Path = Field(REPO_ROOT / ".venv-compress" / "bin" / "python",
                                  description="The python of the compression environment (llmcompressor), which "
                                              "compression jobs run: `make install` builds .venv-compress.")

    @model_validator(mode="after")
    def _defaults(self) -> "Settings":
        if not self.database_url:
            self.database_url = f"sqlite:///{self.home / 'maas.db'}"
        self.ray_address = self.ray_address or None
        self.admin_key = self.admin_key or None
        return self

    @property
    def data_root_dirs(self) -> list[Path]:
        return [Path(p).expanduser().resolve() for p in self.data_roots.split(os.pathsep) if p.strip()]

    @property
    def import_root_dirs(self) -> list[Path]:
        return [Path(p).expanduser().resolve() for p in self.import_roots.split(os.pathsep) if p.strip()]

    @cached_property
    def webhook_allow_list(self) -> dict:
        hosts, networks = hosts_and_networks(self.webhook_allow)
        return {"hosts": hosts, "networks": networks}

    def datasets_dir(self, project_id: str) -> Path:
        """Where a project's dataset uploads are kept."""
        return self.storage_dir / "datasets" / project_id

    def finetune_dir(self) -> Path:
        """Where tuning jobs write checkpoints (Ray Train's storage_path) and outputs."""
        return self.storage_dir / "finetune"

    def compression_dir(self, project_id: str) -> Path:
        """Where a project's compression jobs write their status and compressed models."""
        return self.storage_dir / "compression" / project_id

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def credentials_file(self) -> Path:
        return self.home / "credentials"

    @property
    def base_url(self) -> str:
        return self.url or f"http://{self.host}:{self.port}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
