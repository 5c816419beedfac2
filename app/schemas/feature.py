"""Feature definitions (the plan's `features` collection)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from app.schemas.common import (
    Description,
    Identifier,
    ObjectIdStr,
    PropertyName,
    RequestModel,
    ResponseModel,
)

Aggregation = Literal["COUNT", "SUM", "AVG", "MIN", "MAX", "COUNT_DISTINCT", "LAST", "FIRST"]
NUMERIC_AGGREGATIONS: frozenset[str] = frozenset({"SUM", "AVG", "MIN", "MAX"})
MAX_WINDOWS = 10
WINDOW_PATTERN = r"^[1-9][0-9]{0,4}[mhd]$"


class FeatureBase(RequestModel):
    name: Identifier = Field(examples=["cart_adds"])
    description: Description = ""
    pipeline_id: ObjectIdStr
    source_event: Identifier = Field(examples=["add_to_cart"])
    aggregation: Aggregation
    field: PropertyName | None = Field(
        default=None, description="Property aggregated; required for all but COUNT"
    )
    time_windows: list[Annotated[str, StringConstraints(max_length=16)]] = Field(
        min_length=1,
        max_length=MAX_WINDOWS,
        examples=[["5m", "1h", "24h", "7d", "30d"]],
        description="`<n><m|h|d>` between 1m and 90d; deduplicated and sorted on save",
    )
    enabled: bool = True


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
    enabled: bool
    revision: int
    created_at: datetime
    updated_at: datetime
