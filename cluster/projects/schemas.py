"""Project (tenant) schemas."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field

from cluster.schemas import StrictModel, pattern_rule

ProjectIdField = Annotated[str, pattern_rule(r"^[a-z0-9][a-z0-9_-]{0,63}$", "id must be 1-64 of a-z 0-9 _ -, "
                                                                             "starting with a letter or digit")]


class ProjectCreate(StrictModel):
    id: ProjectIdField = Field(description="1-64 of a-z 0-9 _ -, starting with a letter or digit; used in URLs.")
    name: str = Field("", max_length=64, description="Display name (defaults to the id).")


class ProjectView(BaseModel):
    id: str
    name: str
    created_at: int
