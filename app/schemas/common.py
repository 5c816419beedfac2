"""Base models and constrained types shared by every schema."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

# 24 hex characters: the only shape a pipeline/feature/deployment id can take. Anything
# else (`$where`, `{"$gt": ""}`, `../`) is refused before it could reach a query.
OBJECT_ID_PATTERN = r"^[0-9a-f]{24}$"
ObjectIdStr = Annotated[str, StringConstraints(pattern=OBJECT_ID_PATTERN)]

# Event and feature names are identifiers: they become Kafka payload keys, served
# feature keys and store map keys.
IDENTIFIER_PATTERN = r"^[a-z][a-z0-9_]{0,62}$"
Identifier = Annotated[str, StringConstraints(pattern=IDENTIFIER_PATTERN)]
# Property (field) names come from storefront payloads, where camelCase is common.
PROPERTY_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
PropertyName = Annotated[str, StringConstraints(pattern=PROPERTY_NAME_PATTERN)]

# Entity names (`product`, `category`) are path segments of the serving routes
# (`/features/{project}/{entity}/{id}`) and part of store keys.
ENTITY_NAME_PATTERN = r"^[a-z][a-z0-9_]{0,31}$"
EntityName = Annotated[str, StringConstraints(pattern=ENTITY_NAME_PATTERN)]
# The user is the default entity; `users` is the user routes' path segment.
USER_ENTITY = "user"
RESERVED_ENTITY_NAMES = frozenset({"user", "users"})

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
Description = Annotated[str, StringConstraints(max_length=1000)]


class RequestModel(BaseModel):
    """Base of every request body: unknown fields are an error, not silently dropped."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


class ResponseModel(BaseModel):
    """Base of every response body."""

    model_config = ConfigDict(from_attributes=True)


T = TypeVar("T")


class Page(ResponseModel, Generic[T]):
    """One page of a list, in a stable order."""

    items: list[T]
    total: int = Field(description="Number of items matching the filters")
    limit: int
    offset: int


class Timestamps(ResponseModel):
    created_at: datetime
    updated_at: datetime
