"""Pipeline templates: ready-made pipelines per category, with suggested features."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Discriminator, Field, Tag

from app.schemas.common import USER_ENTITY, ResponseModel
from app.schemas.feature import Aggregation, FeatureEntity, FeatureFilter, feature_kind
from app.schemas.pipeline import Category, EventDefinition


class SuggestedAggregateFeature(ResponseModel):
    """An aggregate feature a template proposes; created with the pipeline when
    `with_features` is set."""

    kind: Literal["aggregate"] = "aggregate"
    name: str = Field(examples=["cart_adds"])
    description: str = ""
    source_event: str
    aggregation: Aggregation
    field: str | None = None
    time_windows: list[str]
    size: int | None = None
    filter: FeatureFilter | None = None
    entity: FeatureEntity = USER_ENTITY


class SuggestedDerivedFeature(ResponseModel):
    """A derived feature a template proposes over its own suggested aggregates."""

    kind: Literal["derived"] = "derived"
    name: str = Field(examples=["cart_rate_24h"])
    description: str = ""
    expression: str = Field(examples=["cart_adds_24h / page_views_24h"])


SuggestedFeature = Annotated[
    Annotated[SuggestedAggregateFeature, Tag("aggregate")]
    | Annotated[SuggestedDerivedFeature, Tag("derived")],
    Discriminator(feature_kind),
]


class PipelineTemplate(ResponseModel):
    """A ready pipeline: POST .../pipelines with `{"template": name, "name": ...}`."""

    name: str = Field(examples=["behavioral"])
    title: str
    description: str
    category: Category
    events: list[EventDefinition]
    suggested_features: list[SuggestedFeature]
