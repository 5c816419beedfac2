"""What the config store keeps: the API's read models plus the fields that never leave it."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import Discriminator, Tag, TypeAdapter

from app.schemas.deployment import ConfigSnapshot, DeploymentRead
from app.schemas.feature import AggregateFeatureRead, DerivedFeatureRead, feature_kind
from app.schemas.pipeline import PipelineRead


class PipelineDocument(PipelineRead):
    """A pipeline with its webhook signing secrets (`whsec_...`)."""

    webhook_secret: str
    previous_webhook_secret: str | None = None
    previous_secret_expires_at: datetime | None = None


class AggregateFeatureDocument(AggregateFeatureRead):
    """An aggregate feature definition as stored."""


class DerivedFeatureDocument(DerivedFeatureRead):
    """A derived feature definition as stored."""


FeatureDocument = Annotated[
    Annotated[AggregateFeatureDocument, Tag("aggregate")]
    | Annotated[DerivedFeatureDocument, Tag("derived")],
    Discriminator(feature_kind),
]
FEATURE_DOCUMENT: TypeAdapter[FeatureDocument] = TypeAdapter(FeatureDocument)
"""Validates a stored feature (`FEATURE_DOCUMENT.validate_python(row)`) as its kind."""


class DeploymentDocument(DeploymentRead):
    """A deployment with the full config snapshot it activated."""

    snapshot: ConfigSnapshot
