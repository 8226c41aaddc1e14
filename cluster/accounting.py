"""The shared accounting actor: one named, detached, restartable Ray actor every gateway replica asks.

It is the single answer to "who is this caller and what may they call": it holds the hashes of live API
keys and the table of served models, loaded from SQL on (re)start and updated by the control plane
before each change returns, so a deleted key is refused on the very next request in every replica.
Later issues add the RPM/TPM/QPS windows and usage records here.

The gateway depends only on the method names of `AccountingActor` (it looks the actor up by name).
"""

from __future__ import annotations

import hmac
import logging

import ray
from sqlalchemy import select

from cluster.db import ApiKey, ServedModel, session_scope
from cluster.settings import ACCOUNTING_ACTOR, NAMESPACE

log = logging.getLogger(__name__)


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1, max_concurrency=256)
class AccountingActor:
    def __init__(self, database_url: str):
        self._url = database_url
        self._keys: dict[str, dict] = {}
        self._models: dict[str, dict] = {}
        self.reload()

    def reload(self) -> int:
        with session_scope(self._url) as session:
            self._keys = {row.key_hash: {"key_id": row.id, "project_id": row.project_id, "hash": row.key_hash}
                          for row in session.scalars(select(ApiKey))}
            self._models = {row.model_id: {"model_id": row.model_id, "project_id": row.project_id,
                                           "app_name": row.app_name, "deployment_name": row.deployment_name,
                                           "card": row.card}
                            for row in session.scalars(select(ServedModel))}
        return len(self._keys)

    def add_key(self, key_hash: str, key_id: str, project_id: str) -> None:
        self._keys[key_hash] = {"key_id": key_id, "project_id": project_id, "hash": key_hash}

    def revoke_key(self, key_hash: str) -> None:
        self._keys.pop(key_hash, None)

    def set_model(self, route: dict) -> None:
        self._models[route["model_id"]] = route

    def _caller(self, key_hash: str) -> dict | None:
        # The lookup is by SHA-256 digest (nothing an attacker can steer); the final check is constant-time.
        info = self._keys.get(key_hash)
        if info is None or not hmac.compare_digest(key_hash, info["hash"]):
            return None
        return {"key_id": info["key_id"], "project_id": info["project_id"]}

    def _visible(self, route: dict, project_id: str) -> bool:
        return route["project_id"] in (None, project_id)

    def authorize(self, key_hash: str, model_id: str | None) -> dict:
        """One round trip per request: the caller, and the route of the model it asked for."""
        caller = self._caller(key_hash)
        if caller is None:
            return {"error": "ModelArts.81003"}
        if model_id is None:
            return {"caller": caller}
        route = self._models.get(model_id)
        if route is None or not self._visible(route, caller["project_id"]):
            return {"caller": caller, "error": "model_not_found"}
        return {"caller": caller, "route": route}

    def list_models(self, key_hash: str) -> dict:
        caller = self._caller(key_hash)
        if caller is None:
            return {"error": "ModelArts.81003"}
        return {"caller": caller,
                "models": [r for r in self._models.values() if self._visible(r, caller["project_id"])]}


def get_or_create(database_url: str):
    return AccountingActor.options(name=ACCOUNTING_ACTOR, namespace=NAMESPACE, lifetime="detached",
                                   get_if_exists=True).remote(database_url)
