"""API key schemas (spec §9.1): what a caller sends to create one and what the API shows of it."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, Field

from cluster.schemas import StrictModel, pattern_rule
from cluster.state.db import ApiKey

Label = Annotated[str, pattern_rule(r"^[A-Za-z0-9_-]{1,100}$", "label must be 1-100 characters of A-Z a-z 0-9 _ -")]


def _description(value: str) -> str:
    if not 1 <= len(value) <= 100:
        raise ValueError("description must be 1-100 characters")
    return value


Description = Annotated[str, AfterValidator(_description)]


class KeyCreate(StrictModel):
    label: Label = Field(description="1-100 characters of A-Z a-z 0-9 _ -, unique in the project.")
    description: Description = Field(description="1-100 characters.")


class KeyView(BaseModel):
    id: str
    project_id: str
    label: str
    description: str
    key_masked: str
    created_at: int

    @classmethod
    def of(cls, row: ApiKey) -> "KeyView":
        return cls(id=row.id, project_id=row.project_id, label=row.label, description=row.description,
                   key_masked=f"{row.prefix}{'*' * 8}{row.suffix}", created_at=row.created_at)


class KeyCreated(KeyView):
    key: str = Field(description="The secret. Shown once, never stored.")
