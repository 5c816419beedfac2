"""Feature definitions (the plan's `features` collection)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, Self

from pydantic import (
    Field,
    SerializerFunctionWrapHandler,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    StringConstraints,
    model_serializer,
    model_validator,
)

from app.schemas.common import (
    USER_ENTITY,
    Description,
    EntityName,
    Identifier,
    ObjectIdStr,
    PropertyName,
    RequestModel,
    ResponseModel,
)

Aggregation = Literal[
    "COUNT",
    "SUM",
    "AVG",
    "MIN",
    "MAX",
    "COUNT_DISTINCT",
    "LAST",
    "FIRST",
    "LAST_N",
    "TOP_K",
    "RECENCY",
]
NUMERIC_AGGREGATIONS: frozenset[str] = frozenset({"SUM", "AVG", "MIN", "MAX"})
# Aggregations that count events and take no field.
FIELDLESS_AGGREGATIONS: frozenset[str] = frozenset({"COUNT", "RECENCY"})
# Aggregations that take a `size` (LAST_N's N, TOP_K's K), between 1 and MAX_SIZE.
SIZED_AGGREGATIONS: frozenset[str] = frozenset({"LAST_N", "TOP_K"})
MAX_SIZE = 50
MAX_CONDITIONS = 10
MAX_IN_VALUES = 100
FilterOp = Literal["eq", "ne", "in", "not_in", "gt", "gte", "lt", "lte", "exists"]
Scalar = StrictStr | StrictInt | StrictFloat | StrictBool


class FilterCondition(RequestModel):
    """`field op value` on the source event's properties (see the README's filters)."""

    field: PropertyName
    op: FilterOp
    value: Scalar | list[Scalar] | None = Field(
        default=None,
        description="A value of the field's type; a list for in/not_in (up to 100); "
        "for exists, true (default) or false",
    )


class FeatureFilter(RequestModel):
    """Conditions on the event's properties, combined with AND (`all`) or OR (`any`)."""

    all: list[FilterCondition] | None = Field(default=None, max_length=MAX_CONDITIONS)
    any: list[FilterCondition] | None = Field(default=None, max_length=MAX_CONDITIONS)

    @model_validator(mode="after")
    def _one_non_empty_list(self) -> Self:
        if bool(self.all) == bool(self.any):
            raise ValueError("a filter has exactly one of `all` and `any`, not empty")
        return self

    @model_serializer(mode="wrap")
    def _only_the_list_given(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # {"all": [...]} reads back as written, without an "any": null beside it.
        data: dict[str, Any] = handler(self)
        return {k: v for k, v in data.items() if v is not None}

    @property
    def mode(self) -> Literal["all", "any"]:
        return "all" if self.all else "any"

    @property
    def conditions(self) -> list[FilterCondition]:
        return self.all or self.any or []


FeatureEntity = EntityName | list[EntityName]
"""Whom a feature aggregates per: `"user"` (the default), a declared entity of the source
event (`"product"`: one value per product), or `["user", "<entity>"]` (per user and
entity value: "this user's spend per category", served in the user's answer as
`{entity value: value}`)."""


def entity_problem(entity: str | list[str]) -> str | None:
    """Returns why `entity` is not one of the three shapes, or None."""
    if isinstance(entity, str):
        return None if entity != "users" else "the user entity is named 'user'"
    if len(entity) != 2 or entity[0] != USER_ENTITY or entity[1] == USER_ENTITY:
        return 'a pair is ["user", "<entity>"]'
    return None


MAX_WINDOWS = 10
WINDOW_PATTERN = r"^[1-9][0-9]{0,4}[mhd]$"


class FeatureBase(RequestModel):
    name: Identifier = Field(examples=["cart_adds"])
    description: Description = ""
    pipeline_id: ObjectIdStr
    source_event: Identifier = Field(examples=["add_to_cart"])
    aggregation: Aggregation
    field: PropertyName | None = Field(
        default=None, description="Property aggregated; required for all but COUNT and RECENCY"
    )
    time_windows: list[Annotated[str, StringConstraints(max_length=16)]] = Field(
        min_length=1,
        max_length=MAX_WINDOWS,
        examples=[["5m", "1h", "24h", "7d", "30d"]],
        description="`<n><m|h|d>` between 1m and 90d; deduplicated and sorted on save",
    )
    size: int | None = Field(
        default=None, description="N of LAST_N, K of TOP_K (1..50); only for those two"
    )
    filter: FeatureFilter | None = Field(
        default=None, description="Only events whose properties pass it count"
    )
    entity: FeatureEntity = Field(
        default=USER_ENTITY,
        description='`"user"` (default), an entity key of the source event (`"product"`), '
        'or `["user", "<entity>"]` for a value per user and entity (`{"shoes": 3}`)',
        examples=["user", "product", ["user", "category"]],
    )
    enabled: bool = True

    @model_validator(mode="after")
    def _entity_shape(self) -> Self:
        why = entity_problem(self.entity)
        if why is not None:
            raise ValueError(f"entity: {why}")
        return self


class FeatureCreate(FeatureBase):
    """POST body."""


class FeatureUpdate(FeatureBase):
    """PUT body: a full replacement. `revision` must match the stored one (else 409)."""

    revision: int = Field(ge=1)


class FeatureRead(ResponseModel):
    id: ObjectIdStr
    project_id: str
    pipeline_id: str
    name: str
    description: str
    source_event: str
    aggregation: Aggregation
    field: str | None
    time_windows: list[str]
    size: int | None = None
    filter: FeatureFilter | None = None
    entity: FeatureEntity = USER_ENTITY
    enabled: bool
    revision: int
    created_at: datetime
    updated_at: datetime
