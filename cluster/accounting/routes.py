"""What a model name means to a caller: built from SQL by the accounting actor on every (re)load.

A name resolves, in the caller's project, to a custom endpoint, then to one of the project's services,
then to a platform-wide preset. Routes are `serve_apps.contract.Route` (plain dicts: they cross Ray calls
cheaply).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from cluster.my_models.registry import resolve_version
from cluster.state.db import Endpoint, ModelVersion, MyModel, Preset, PresetGrant, ServedModel, Service
from serve_apps.contract import EndpointRoute, Route
from serve_apps.catalog import BUILTIN_MODELS

CALLABLE_STATUSES = {"Running", "Concerning", "Upgrade", "Scale"}
_CARDS = {m.id: m.model_dump(mode="json") for m in BUILTIN_MODELS}


@dataclass
class RouteTable:
    presets: dict[str, Route] = field(default_factory=dict)  # model id -> route
    services: dict[tuple[str, str], Route] = field(default_factory=dict)  # (project, name) -> route
    services_by_id: dict[str, Route] = field(default_factory=dict)
    loras: dict[tuple[str, str], Route] = field(default_factory=dict)  # (project, name) -> my-model LoRA route
    endpoints: dict[tuple[str, str], EndpointRoute] = field(default_factory=dict)  # (project, name) -> endpoint
    grants: dict[tuple[str, str], dict] = field(default_factory=dict)  # (project, model) -> grant

    def resolve(self, project_id: str, name: str) -> tuple[EndpointRoute | None, Route | None]:
        """(endpoint or None, route of what answers) for a name the caller used."""
        endpoint = self.endpoints.get((project_id, name))
        if endpoint is not None:
            target = endpoint["target"]
            route = self.services_by_id.get(target) or self.presets.get(target)
            return endpoint, route
        return None, (self.services.get((project_id, name)) or self.loras.get((project_id, name))
                      or self.presets.get(name))

    def lora_ids(self, project_id: str, offer: str) -> set[str]:
        """The LoRA versions of a project served on the engine of preset `offer`."""
        return {r["service_id"] for (p, _), r in self.loras.items() if p == project_id and r.get("offer") == offer}

    def visible(self, project_id: str) -> list[dict]:
        """What GET /v1/models lists for a project: presets, its callable services, its enabled endpoints."""
        names = [{"id": r["name"], "created": r["created"], "owned_by": r["owned_by"]} for r in self.presets.values()]
        names += [{"id": r["name"], "created": r["created"], "owned_by": project_id}
                  for (p, _), r in self.services.items() if p == project_id and r["status"] in CALLABLE_STATUSES]
        names += [{"id": e["name"], "created": e["created"], "owned_by": project_id}
                  for (p, _), e in self.endpoints.items() if p == project_id and e["enabled"]]
        names += [{"id": name, "created": r["created"], "owned_by": project_id}
                  for (p, name), r in self.loras.items() if p == project_id]
        return names


def load_routes(session: Session) -> RouteTable:
    table = RouteTable()
    presets = {p.model_id: p for p in session.scalars(select(Preset))}
    for row in session.scalars(select(ServedModel).where(ServedModel.project_id.is_(None))):
        preset = presets.get(row.model_id)
        table.presets[row.model_id] = {
            "kind": "preset", "name": row.model_id, "offer": row.model_id,
            "service_type": preset.kind if preset else "free",
            "service_id": row.model_id, "app_name": row.app_name, "deployment_name": row.deployment_name,
            "engine_model": row.model_id, "card": row.card, "moderation": True, "qps": None,
            "status": "Running", "created": row.card.get("created", row.created_at), "owned_by": "maas",
            "preset": {"expires_at": preset.expires_at, "free_quota_tokens": preset.free_quota_tokens,
                       "rpm": preset.rpm, "tpm": preset.tpm} if preset else None,
        }
    for svc in session.scalars(select(Service)):
        engine_model, card = svc.model_id, _CARDS.get(svc.model_id)
        if card is None:  # a version of one of the project's own models: the engine serves it by its card id
            try:
                resolved = resolve_version(session, svc.project_id, svc.model_id, svc.model_version)
            except Exception:  # its model was removed: the service cannot answer anyway
                continue
            engine_model, card = resolved.card.id, resolved.card.model_dump(mode="json")
        route = {
            "kind": "service", "name": svc.name, "project_id": svc.project_id, "service_type": "service",
            "service_id": svc.id, "app_name": svc.app_name, "deployment_name": f"engine-{engine_model}",
            "engine_model": engine_model, "card": card, "moderation": svc.moderation,
            "qps": svc.qps, "status": svc.status, "created": svc.created_at, "owned_by": svc.project_id,
            "preset": None,
        }
        table.services[(svc.project_id, svc.name)] = route
        table.services_by_id[svc.id] = route
    _add_loras(session, table)
    for ep in session.scalars(select(Endpoint).where(Endpoint.deleted_at.is_(None))):
        table.endpoints[(ep.project_id, ep.name)] = {
            "name": ep.name, "endpoint_id": ep.id, "target": ep.target, "rpm": ep.rpm, "tpm": ep.tpm,
            "enabled": ep.enabled, "created": ep.created_at,
        }
    for grant in session.scalars(select(PresetGrant)):
        table.grants[(grant.project_id, grant.model_id)] = {"frozen": grant.frozen, "granted": grant.granted,
                                                             "since": grant.created_at}
    return table


def _add_loras(session: Session, table: RouteTable) -> None:
    """A LoRA version of a my-model is served on its base model's engine (vLLM multi-LoRA) as
    `<model name>-v<N>`, and `<model name>` is its latest LoRA version."""
    rows = session.execute(select(MyModel, ModelVersion).join(ModelVersion, ModelVersion.model_id == MyModel.id)
                           .where(ModelVersion.kind == "lora").order_by(ModelVersion.version))
    for model, version in rows:
        base = table.presets.get(model.base_model)
        if base is None:  # the base model is not served by this platform
            continue
        # The base preset's offer governs its LoRA versions too: access rules, model limits, free quota.
        route = base | {"kind": "lora", "service_type": "service", "service_id": version.id,
                        "lora": version.path, "engine_model": version.path, "project_id": model.project_id,
                        "created": version.created_at, "owned_by": model.project_id}
        for name in (f"{model.name}-v{version.version}", model.name):  # the later version wins the plain name
            table.loras[(model.project_id, name)] = route | {"name": name}
