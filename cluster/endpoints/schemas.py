"""Custom endpoint schemas (spec §4.4)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field

from cluster.schemas import StrictModel, pattern_rule
from cluster.state.db import MAX_BIGINT, Endpoint

# \w: letters of any script (CJK included), digits, underscore
EndpointName = Annotated[str, pattern_rule(r"^[\w-]{1,64}$", "name must be 1-64 letters, digits, _ or -, with no "
                                                              "other characters")]


class EndpointCreate(StrictModel):
    name: EndpointName = Field(description="1-64 letters, digits, _ or -; unique in the project, forever.")
    service: str = Field(description="A commercial preset the project activated, or a service id or name.")
    description: str = Field("", max_length=256)
    rpm: int | None = Field(None, gt=0, le=MAX_BIGINT, description="Default: the model's limit for the project.")
    tpm: int | None = Field(None, gt=0, le=MAX_BIGINT, description="Default: the model's limit for the project.")


class EndpointUpdate(StrictModel):
    """Description and limits: the service an endpoint fronts cannot be changed."""

    description: str | None = Field(None, max_length=256)
    rpm: int | None = Field(None, gt=0, le=MAX_BIGINT)
    tpm: int | None = Field(None, gt=0, le=MAX_BIGINT)


class Confirm(StrictModel):
    confirm: str = Field("", description="The confirmation word the action needs (disable: YES).")


class EndpointView(BaseModel):
    id: str
    project_id: str
    name: str
    description: str
    service: str
    rpm: int
    tpm: int
    status: str = Field(description="in_use or disabled")
    created_at: int
    updated_at: int

    @classmethod
    def of(cls, row: Endpoint) -> "EndpointView":
        return cls(id=row.id, project_id=row.project_id, name=row.name, description=row.description,
                   service=row.target, rpm=row.rpm, tpm=row.tpm, status="in_use" if row.enabled else "disabled",
                   created_at=row.created_at, updated_at=row.updated_at)
