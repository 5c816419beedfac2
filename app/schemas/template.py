"""Pipeline templates: ready-made pipelines per category, with suggested features."""

from __future__ import annotations

from pydantic import Field

from app.schemas.common import USER_ENTITY, ResponseModel
from app.schemas.feature import Aggregation, FeatureEntity, FeatureFilter
from app.schemas.pipeline import Category, EventDefinition


class SuggestedFeature(ResponseModel):
    """A feature a template proposes; created with the pipeline when `with_features` is set."""

    name: str = Field(examples=["cart_adds"])
    description: str = ""
    source_event: str
    aggregation: Aggregation
    field: str | None = None
    time_windows: list[str]
    size: int | None = None
    filter: FeatureFilter | None = None
    entity: FeatureEntity = USER_ENTITY


class PipelineTemplate(ResponseModel):
    """A ready pipeline: POST .../pipelines with `{"template": name, "name": ...}`."""

    name: str = Field(examples=["behavioral"])
    title: str
    description: str
    category: Category
    events: list[EventDefinition]
    suggested_features: list[SuggestedFeature]
