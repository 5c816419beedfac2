"""What the config store keeps: the API's read models plus the fields that never leave it."""

from __future__ import annotations

from datetime import datetime

from app.schemas.deployment import ConfigSnapshot, DeploymentRead
from app.schemas.feature import FeatureRead
from app.schemas.pipeline import PipelineRead


class PipelineDocument(PipelineRead):
    """A pipeline with its webhook signing secrets (`whsec_...`)."""

    webhook_secret: str
    previous_webhook_secret: str | None = None
    previous_secret_expires_at: datetime | None = None


class FeatureDocument(FeatureRead):
    """A feature definition as stored."""


class DeploymentDocument(DeploymentRead):
    """A deployment with the full config snapshot it activated."""

    snapshot: ConfigSnapshot
