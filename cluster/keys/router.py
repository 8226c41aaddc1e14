"""REST routes of API keys: `/v1/{project_id}/keys` (the admin key, or a key of the project)."""

from __future__ import annotations

from fastapi import APIRouter

from cluster.runtime.accounting import on_every_shard
from cluster.deps import ProjectId, database_url
from cluster.keys import service
from cluster.keys.schemas import KeyCreate, KeyCreated, KeyView
from cluster.state.db import session_scope

router = APIRouter(prefix="/v1/{project_id}/keys", tags=["keys"])


@router.post("", status_code=201, response_model=KeyCreated)
async def create_key(project_id: ProjectId, spec: KeyCreate):
    with session_scope(database_url()) as session:
        created, key_hash = service.create_key(session, project_id, spec)
    # Committed first: a reload of the actor in between can only see the key, never lose it.
    await on_every_shard("add_key", key_hash, created.id, project_id)
    return created


@router.get("", response_model=list[KeyView])
async def list_keys(project_id: ProjectId):
    with session_scope(database_url()) as session:
        return service.list_keys(session, project_id)


@router.delete("/{key_id}", status_code=204)
async def delete_key(project_id: ProjectId, key_id: str):
    with session_scope(database_url()) as session:
        key_hash = service.delete_key(session, project_id, key_id)
    # Committed first, then revoked: a reload before the commit could otherwise bring the deleted key back
    # (the actor runs reloads and revokes one at a time, so none can interleave with this one).
    await on_every_shard("revoke_key", key_hash)
