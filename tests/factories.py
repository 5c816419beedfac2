"""Builders for request payloads and stored documents.

Payload builders return plain dicts (what a dashboard would POST); document builders
return the models the config store keeps. Every builder takes keyword overrides, so a
test states only what matters to it. Names are unique per call where uniqueness is a
rule (pipeline and feature names), so builders can be called repeatedly in one project.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Any

from bson import ObjectId

from app.db.documents import (
    FEATURE_DOCUMENT,
    DeploymentDocument,
    FeatureDocument,
    PipelineDocument,
)
from app.schemas.deployment import (
    Change,
    ConfigSnapshot,
    PipelineSnapshot,
)
from app.schemas.pipeline import EventDefinition
from app.services.config_diff import feature_snapshot

_counter = itertools.count(1)


def new_id() -> str:
    """A fresh ObjectId as 24 hex characters."""
    return str(ObjectId())


def now() -> datetime:
    """The current UTC time at millisecond precision (what the stores keep)."""
    t = datetime.now(UTC)
    return t.replace(microsecond=t.microsecond // 1000 * 1000)


def unique_name(prefix: str) -> str:
    """An identifier-shaped name (`^[a-z][a-z0-9_]*$`) unique within the test run."""
    return f"{prefix}_{next(_counter)}_{ObjectId()!s}"[:63]


# -- payloads (request bodies) ---------------------------------------------------------
def field_payload(
    name: str = "product_id", type_: str = "string", **overrides: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {"name": name, "type": type_, "required": False, "description": ""}
    body.update(overrides)
    return body


def add_to_cart_fields() -> list[dict[str, Any]]:
    return [
        field_payload("product_id", "string", required=True),
        field_payload("quantity", "number"),
        field_payload("price", "number"),
        field_payload("currency", "string"),
    ]


def event_payload(name: str = "add_to_cart", **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": name,
        "description": f"{name} event",
        "enabled": True,
        "fields": add_to_cart_fields(),
    }
    body.update(overrides)
    return body


def pipeline_payload(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": unique_name("pipeline"),
        "description": "storefront events",
        "category": "behavioral",
        "events": [event_payload("add_to_cart"), event_payload("purchase")],
    }
    body.update(overrides)
    return body


def feature_payload(pipeline_id: str, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": unique_name("feature"),
        "description": "items added to cart",
        "pipeline_id": pipeline_id,
        "source_event": "add_to_cart",
        "aggregation": "COUNT",
        "field": None,
        "time_windows": ["5m", "1h", "24h"],
        "enabled": True,
    }
    body.update(overrides)
    return body


# -- documents (what the config store keeps) -------------------------------------------
def pipeline_document(project_id: str, **overrides: Any) -> PipelineDocument:
    t = now()
    data: dict[str, Any] = {
        "id": new_id(),
        "project_id": project_id,
        "name": unique_name("pipeline"),
        "description": "",
        "category": "behavioral",
        "status": "inactive",
        "events": [EventDefinition.model_validate(event_payload("add_to_cart"))],
        "revision": 1,
        "created_at": t,
        "updated_at": t,
        "webhook_secret": "whsec_" + "A" * 32,
    }
    data.update(overrides)
    return PipelineDocument.model_validate(data)


def feature_document(project_id: str, pipeline_id: str, **overrides: Any) -> FeatureDocument:
    t = now()
    data: dict[str, Any] = {
        "id": new_id(),
        "project_id": project_id,
        "pipeline_id": pipeline_id,
        "name": unique_name("feature"),
        "description": "",
        "source_event": "add_to_cart",
        "aggregation": "COUNT",
        "field": None,
        "time_windows": ["5m", "1h"],
        "enabled": True,
        "revision": 1,
        "created_at": t,
        "updated_at": t,
    }
    data.update(overrides)
    return FEATURE_DOCUMENT.validate_python(data)


def snapshot(
    project_id: str,
    version: int,
    pipelines: list[PipelineDocument] | None = None,
    features: list[FeatureDocument] | None = None,
) -> ConfigSnapshot:
    """The snapshot a deployment of these draft documents would carry."""
    return ConfigSnapshot(
        project_id=project_id,
        version=version,
        pipelines=[
            PipelineSnapshot.model_validate(
                p.model_dump(include=set(PipelineSnapshot.model_fields))
            )
            for p in pipelines or []
        ],
        features=[feature_snapshot(f) for f in features or []],
    )


def deployment_document(project_id: str, version: int, **overrides: Any) -> DeploymentDocument:
    t = now()
    data: dict[str, Any] = {
        "id": new_id(),
        "project_id": project_id,
        "version": version,
        "status": "success",
        "changes": [
            Change(
                type="create",
                resource_type="pipeline",
                resource_id=new_id(),
                description="pipeline storefront created",
            )
        ],
        "description": "",
        "deployed_by": "user_1",
        "deployed_at": t,
        "created_at": t,
        "snapshot": snapshot(project_id, version),
    }
    data.update(overrides)
    return DeploymentDocument.model_validate(data)
