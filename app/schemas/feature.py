"""Feature definitions (the plan's `features` collection)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, Self

from pydantic import (
    Discriminator,
    Field,
    SerializerFunctionWrapHandler,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    StringConstraints,
    Tag,
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
# What an expression may reference: aggregations whose served value is one number (or
# null). LAST and FIRST qualify when their field is a number (checked against the event).
NUMBER_VALUED_AGGREGATIONS: frozenset[str] = frozenset(
    {"COUNT", "SUM", "AVG", "MIN", "MAX", "COUNT_DISTINCT", "RECENCY", "LAST", "FIRST"}
)
MAX_EXPRESSION_LENGTH = 500

FeatureKind = Literal["aggregate", "derived"]


def feature_kind(value: Any) -> str:
    """The discriminator of the feature unions: `kind`, "aggregate" when absent (every
    feature stored or sent before derived features existed is an aggregate)."""
    if isinstance(value, dict):
        return str(value.get("kind", "aggregate"))
    return str(getattr(value, "kind", "aggregate"))


class FeatureCommon(RequestModel):
    name: Identifier = Field(examples=["cart_adds"])
    description: Description = ""
    pipeline_id: ObjectIdStr
    enabled: bool = True


class AggregateFeatureBase(FeatureCommon):
    """One aggregation of one event's field (or of its occurrences) over time windows;
    served as `{name}_{window}`."""

    kind: Literal["aggregate"] = "aggregate"
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

    @model_validator(mode="after")
    def _entity_shape(self) -> Self:
        why = entity_problem(self.entity)
        if why is not None:
            raise ValueError(f"entity: {why}")
        return self


class DerivedFeatureBase(FeatureCommon):
    """Arithmetic over other features' served values, evaluated at read time; served
    as `{name}` (no window of its own: the keys it reads carry theirs)."""

    kind: Literal["derived"]
    expression: str = Field(
        max_length=MAX_EXPRESSION_LENGTH,
        examples=["purchases_7d / page_views_7d"],
        description="Served keys of aggregate features (numbers: not LAST_N or TOP_K), "
        "numbers, + - * /, parentheses, min(), max(), coalesce(). x / 0 and any null "
        "input give null (coalesce excepted); results are floats",
    )


class AggregateFeatureCreate(AggregateFeatureBase):
    """POST body of an aggregate feature (`kind` may be omitted)."""


class DerivedFeatureCreate(DerivedFeatureBase):
    """POST body of a derived feature (`"kind": "derived"`)."""


class AggregateFeatureUpdate(AggregateFeatureBase):
    """PUT body: a full replacement. `revision` must match the stored one (else 409)."""

    revision: int = Field(ge=1)


class DerivedFeatureUpdate(DerivedFeatureBase):
    """PUT body: a full replacement. `revision` must match the stored one (else 409)."""

    revision: int = Field(ge=1)


FeatureBase = AggregateFeatureBase | DerivedFeatureBase
FeatureCreate = Annotated[
    Annotated[AggregateFeatureCreate, Tag("aggregate")]
    | Annotated[DerivedFeatureCreate, Tag("derived")],
    Discriminator(feature_kind),
]
FeatureUpdate = Annotated[
    Annotated[AggregateFeatureUpdate, Tag("aggregate")]
    | Annotated[DerivedFeatureUpdate, Tag("derived")],
    Discriminator(feature_kind),
]


class _FeatureReadCommon(ResponseModel):
    id: ObjectIdStr
    project_id: str
    pipeline_id: str
    name: str
    description: str
    enabled: bool
    revision: int
    created_at: datetime
    updated_at: datetime


class AggregateFeatureRead(_FeatureReadCommon):
    kind: Literal["aggregate"] = "aggregate"
    source_event: str
    aggregation: Aggregation
    field: str | None
    time_windows: list[str]
    size: int | None = None
    filter: FeatureFilter | None = None
    entity: FeatureEntity = USER_ENTITY


class DerivedFeatureRead(_FeatureReadCommon):
    kind: Literal["derived"]
    expression: str


# A feature as the API answers it, by `kind`.
FeatureRead = Annotated[
    Annotated[AggregateFeatureRead, Tag("aggregate")]
    | Annotated[DerivedFeatureRead, Tag("derived")],
    Discriminator(feature_kind),
]
