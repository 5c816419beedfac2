"""Pipelines with their nested events and fields (the plan's `pipelines` collection)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field, field_validator, model_validator

from app.schemas.common import (
    RESERVED_ENTITY_NAMES,
    Description,
    EntityName,
    Identifier,
    Name,
    ObjectIdStr,
    PropertyName,
    RequestModel,
    ResponseModel,
)
from app.schemas.feature import FeatureRead

FieldType = Literal["string", "number", "boolean", "timestamp", "object"]
# Field types whose values can name an entity: text, or integers (a `number` field that
# is an entity key only takes integers).
ENTITY_KEY_TYPES: frozenset[str] = frozenset({"string", "number"})
Category = Literal["behavioral", "transaction", "context", "marketing", "trust", "realtime"]
PipelineStatus = Literal["active", "inactive", "configuring"]

MAX_EVENTS_PER_PIPELINE = 100
MAX_FIELDS_PER_EVENT = 100


class EventField(RequestModel):
    """One property an event carries in `properties`."""

    name: PropertyName
    type: FieldType
    required: bool = False
    description: Description = ""
    entity: EntityName | None = Field(
        default=None,
        description="This property's value is the id of entity `entity` (e.g. `product`), "
        "so features may aggregate per product or per user x product; only on string and "
        "number fields (a number key takes integers)",
        examples=["product"],
    )

    @model_validator(mode="after")
    def _keyable(self) -> EventField:
        if self.entity is None:
            return self
        if self.entity in RESERVED_ENTITY_NAMES:
            raise ValueError(f"entity {self.entity!r} is reserved (the user is every event's)")
        if self.type not in ENTITY_KEY_TYPES:
            raise ValueError(f"an entity key is a string or number field, not {self.type}")
        return self


class EventDefinition(RequestModel):
    """An event a pipeline accepts, with its property schema."""

    name: Identifier = Field(examples=["add_to_cart"])
    description: Description = ""
    enabled: bool = True
    fields: list[EventField] = Field(default_factory=list, max_length=MAX_FIELDS_PER_EVENT)

    @field_validator("fields")
    @classmethod
    def _unique_field_names(cls, fields: list[EventField]) -> list[EventField]:
        names = [f.name for f in fields]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate field names: {', '.join(duplicates)}")
        entities = [f.entity for f in fields if f.entity is not None]
        twice = sorted({e for e in entities if entities.count(e) > 1})
        if twice:
            raise ValueError(f"one field per entity key; twice: {', '.join(twice)}")
        return fields


def _unique_event_names(events: list[EventDefinition]) -> list[EventDefinition]:
    names = [e.name for e in events]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"duplicate event names: {', '.join(duplicates)}")
    return events


class PipelineCreate(RequestModel):
    """POST body. With `template`, events (and suggested features) come from the template
    unless `events` is given too."""

    name: Name
    description: Description = ""
    category: Category | None = None
    template: Identifier | None = Field(default=None, description="Start from a template")
    with_features: bool = Field(
        default=False,
        description="With `template`: also create the template's suggested features",
    )
    events: list[EventDefinition] | None = Field(default=None, max_length=MAX_EVENTS_PER_PIPELINE)

    @field_validator("events")
    @classmethod
    def _unique_events(cls, events: list[EventDefinition] | None) -> list[EventDefinition] | None:
        return _unique_event_names(events) if events is not None else None


class PipelineUpdate(RequestModel):
    """PUT body: a full replacement. `revision` must match the stored one (else 409)."""

    name: Name
    description: Description = ""
    category: Category
    events: list[EventDefinition] = Field(max_length=MAX_EVENTS_PER_PIPELINE)
    revision: int = Field(ge=1, description="The revision this edit was based on")

    @field_validator("events")
    @classmethod
    def _unique_events(cls, events: list[EventDefinition]) -> list[EventDefinition]:
        return _unique_event_names(events)


class EventUpdate(EventDefinition):
    """PUT .../events/{event_name} body; `name` may differ to rename the event."""


class PipelineRead(ResponseModel):
    id: ObjectIdStr
    project_id: str
    name: str
    description: str
    category: Category
    status: PipelineStatus
    events: list[EventDefinition]
    revision: int
    created_at: datetime
    updated_at: datetime


class WebhookSecrets(ResponseModel):
    """Signing secrets of a pipeline. Never part of PipelineRead or a deployment snapshot."""

    current: str
    previous: str | None = None
    previous_expires_at: datetime | None = None


class WebhookRotate(RequestModel):
    """POST .../webhook/rotate body (optional)."""

    grace_hours: int | None = Field(
        default=None,
        ge=0,
        le=24 * 30,
        description="How long the previous secret stays valid; default from settings "
        "(API_DEFAULT_ROTATION_GRACE_HOURS, 24); 0 retires it at once",
    )


class WebhookInfo(ResponseModel):
    """What a storefront needs to send signed events to this pipeline."""

    pipeline_id: str
    ingest_url: str = Field(examples=["https://ingest.example.com/ingest/shop_1/6650..."])
    batch_ingest_url: str
    signature_scheme: str = Field(examples=["standard-webhooks-v1"])
    signature_description: str
    headers: dict[str, str] = Field(description="Header name → what to put in it")
    secret: str = Field(description="Current signing secret (`whsec_...`)")
    secret_expires_at: datetime | None = Field(
        default=None, description="Always null: the current secret is valid until rotated"
    )
    previous_secret: str | None = Field(
        default=None, description="The secret before the last rotation, while still valid"
    )
    previous_secret_expires_at: datetime | None = None


class PipelineCreated(PipelineRead):
    """POST .../pipelines answer: the pipeline, and the features a template brought."""

    features: list[FeatureRead] = Field(default_factory=list)
