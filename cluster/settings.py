"""Platform settings, read from the environment once: where state lives and how to reach things."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel

NAMESPACE = "maas"  # Ray namespace of the platform's named actors
ACCOUNTING_ACTOR = "maas-accounting"
GATEWAY_APP = "maas-gateway"
CONTROL_APP = "maas-control"


class Settings(BaseModel):
    home: Path
    database_url: str
    host: str = "127.0.0.1"
    port: int = 8000
    accelerator: str = "cpu"
    ray_address: str | None = None

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def credentials_file(self) -> Path:
        return self.home / "credentials"

    @property
    def base_url(self) -> str:
        return os.environ.get("MAAS_URL", f"http://{self.host}:{self.port}")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    home = Path(os.environ.get("MAAS_HOME", Path.home() / ".maas")).expanduser().resolve()
    return Settings(
        home=home,
        database_url=os.environ.get("MAAS_DATABASE_URL", f"sqlite:///{home / 'maas.db'}"),
        host=os.environ.get("MAAS_HOST", "127.0.0.1"),
        port=int(os.environ.get("MAAS_PORT", "8000")),
        accelerator=os.environ.get("MAAS_ACCELERATOR", "cpu"),
        ray_address=os.environ.get("RAY_ADDRESS") or None,
    )
