"""Request and response examples shown on the OpenAPI page of the config API."""

from __future__ import annotations

from typing import Any

from fastapi.openapi.models import Example

PIPELINE_ID = "6650f1c2a8b4e3d2c1b0a987"
FEATURE_ID = "6650f1c2a8b4e3d2c1b0a988"
PROJECT_ID = "shop_1"
_TIMES = {"created_at": "2026-05-01T09:30:00Z", "updated_at": "2026-05-01T09:45:12.345Z"}

ADD_TO_CART_EVENT: dict[str, Any] = {
    "name": "add_to_cart",
    "description": "A product was added to the cart",
    "enabled": True,
    "fields": [
        {"name": "product_id", "type": "string", "required": True, "description": ""},
        {"name": "quantity", "type": "number", "required": False, "description": ""},
        {"name": "price", "type": "number", "required": False, "description": "Unit price"},
        {"name": "currency", "type": "string", "required": False, "description": "ISO 4217"},
    ],
}

# What a dashboard sends to create the pipeline; PUT sends it again with the revision.
_STOREFRONT: dict[str, Any] = {
    "name": "Storefront",
    "description": "Web shop events",
    "category": "behavioral",
    "events": [ADD_TO_CART_EVENT],
}

PIPELINE: dict[str, Any] = {
    "id": PIPELINE_ID,
    "project_id": PROJECT_ID,
    "name": "Storefront",
    "description": "Web shop events",
    "category": "behavioral",
    "status": "inactive",
    "events": [ADD_TO_CART_EVENT],
    "revision": 3,
    **_TIMES,
}

FEATURE: dict[str, Any] = {
    "id": FEATURE_ID,
    "project_id": PROJECT_ID,
    "pipeline_id": PIPELINE_ID,
    "name": "cart_value_added",
    "description": "Value added to the cart",
    "source_event": "add_to_cart",
    "aggregation": "SUM",
    "field": "price",
    "time_windows": ["5m", "1h", "24h"],
    "enabled": True,
    "revision": 1,
    **_TIMES,
}

WEBHOOK: dict[str, Any] = {
    "pipeline_id": PIPELINE_ID,
    "ingest_url": f"https://ingest.example.com/ingest/{PROJECT_ID}/{PIPELINE_ID}",
    "batch_ingest_url": f"https://ingest.example.com/ingest/{PROJECT_ID}/{PIPELINE_ID}/batch",
    "signature_scheme": "standard-webhooks-v1",
    "signature_description": "webhook-signature is 'v1,' + base64(HMAC-SHA256(...))",
    "headers": {
        "webhook-id": "Unique message id",
        "webhook-timestamp": "Unix time in seconds",
        "webhook-signature": "'v1,<base64 signature>'",
        "content-type": "application/json",
    },
    "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw8mQ2VZy6Yx0=",
    "secret_expires_at": None,
    "previous_secret": "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
    "previous_secret_expires_at": "2026-05-02T09:45:12.345Z",
}


def page(item: dict[str, Any]) -> dict[str, Any]:
    """Returns a one-item Page example."""
    return {"items": [item], "total": 1, "limit": 50, "offset": 0}


def ok(example: Any, description: str = "Success") -> dict[str, Any]:
    """Returns an OpenAPI `responses` entry with an example body."""
    return {"description": description, "content": {"application/json": {"example": example}}}


PIPELINE_CREATE_EXAMPLES: dict[str, Example] = {
    "events": Example(summary="With events", value=_STOREFRONT),
    "template": Example(
        summary="From a template, with its suggested features",
        value={"name": "Orders", "template": "transaction", "with_features": True},
    ),
    "empty": Example(
        summary="Empty (status `configuring` until it has events)",
        value={"name": "Later", "category": "marketing"},
    ),
}

PIPELINE_UPDATE_EXAMPLES: dict[str, Example] = {
    "replace": Example(
        summary="Full replacement on revision 3",
        value={**_STOREFRONT, "revision": 3},
    )
}

EVENT_EXAMPLES: dict[str, Example] = {
    "event": Example(summary="An event with its fields", value=ADD_TO_CART_EVENT),
}

EVENT_RENAME_EXAMPLES: dict[str, Example] = {
    "rename": Example(
        summary="Rename add_to_cart to cart_add (features follow)",
        value={**ADD_TO_CART_EVENT, "name": "cart_add"},
    ),
}

FEATURE_CREATE_EXAMPLES: dict[str, Example] = {
    "sum": Example(
        summary="SUM of a number field",
        value={
            "name": "cart_value_added",
            "description": "Value added to the cart",
            "pipeline_id": PIPELINE_ID,
            "source_event": "add_to_cart",
            "aggregation": "SUM",
            "field": "price",
            "time_windows": ["5m", "1h", "24h"],
        },
    ),
    "count": Example(
        summary="COUNT (no field)",
        value={
            "name": "cart_adds",
            "pipeline_id": PIPELINE_ID,
            "source_event": "add_to_cart",
            "aggregation": "COUNT",
            "time_windows": ["5m", "1h", "24h"],
        },
    ),
    "derived": Example(
        summary="Derived: arithmetic of served keys, evaluated at read time",
        value={
            "kind": "derived",
            "name": "cart_rate_1h",
            "pipeline_id": PIPELINE_ID,
            "expression": "cart_adds_1h / page_views_1h",
        },
    ),
}

FEATURE_UPDATE_EXAMPLES: dict[str, Example] = {
    "replace": Example(
        summary="Full replacement on revision 1",
        value={
            "name": "cart_value_added",
            "pipeline_id": PIPELINE_ID,
            "source_event": "add_to_cart",
            "aggregation": "SUM",
            "field": "price",
            "time_windows": ["1h", "24h", "7d"],
            "enabled": True,
            "revision": 1,
        },
    )
}

ROTATE_EXAMPLES: dict[str, Example] = {
    "default": Example(summary="Default grace period (settings, 24 h)", value={}),
    "one_hour": Example(summary="Keep the old secret for one hour", value={"grace_hours": 1}),
    "immediate": Example(summary="Retire the old secret now", value={"grace_hours": 0}),
}
