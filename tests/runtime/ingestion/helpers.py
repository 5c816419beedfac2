"""Builders shared by the ingestion tests: a deployed snapshot with one event of every
field type, secrets, signed requests, and reading a Kafka topic back."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from aiokafka import AIOKafkaConsumer

from app.schemas.deployment import ConfigSnapshot, PipelineSnapshot
from app.schemas.event import EventMessage
from app.schemas.pipeline import EventDefinition, EventField, WebhookSecrets
from app.services.webhook_secrets import generate_secret
from runtime.ingestion.signature import sign

# Every field type, one required field: the schema the tests validate against.
TYPED_FIELDS: dict[str, tuple[str, bool]] = {
    "sku": ("string", True),
    "price": ("number", False),
    "gift": ("boolean", False),
    "seen_at": ("timestamp", False),
    "meta": ("object", False),
}


def pipeline_id() -> str:
    return uuid.uuid4().hex[:24]


def typed_event(name: str = "add_to_cart", *, enabled: bool = True) -> EventDefinition:
    return EventDefinition(
        name=name,
        enabled=enabled,
        fields=[EventField(name=n, type=t, required=r) for n, (t, r) in TYPED_FIELDS.items()],
    )


def pipeline_snapshot(
    pid: str, *, status: str = "active", events: list[EventDefinition] | None = None
) -> PipelineSnapshot:
    return PipelineSnapshot(
        id=pid,
        name=f"storefront_{pid[:6]}",
        category="behavioral",
        status=status,
        events=events
        if events is not None
        else [typed_event(), typed_event("page_view"), typed_event("old_event", enabled=False)],
    )


def config_snapshot(
    project_id: str, pipelines: list[PipelineSnapshot], version: int = 1
) -> ConfigSnapshot:
    return ConfigSnapshot(project_id=project_id, version=version, pipelines=pipelines, features=[])


def new_secrets(
    *, previous: str | None = None, previous_expires_in_s: float | None = None
) -> WebhookSecrets:
    expires = (
        datetime.now(UTC) + timedelta(seconds=previous_expires_in_s)
        if previous_expires_in_s is not None
        else None
    )
    return WebhookSecrets(current=generate_secret(), previous=previous, previous_expires_at=expires)


def event(**overrides: Any) -> dict[str, Any]:
    """A valid envelope for `add_to_cart` in the typed schema."""
    body: dict[str, Any] = {
        "event": "add_to_cart",
        "user_id": "user-1",
        "event_id": uuid.uuid4().hex,
        "properties": {"sku": "sku-1", "price": 9.5},
    }
    body.update(overrides)
    return body


def signed(
    secret: str,
    payload: Any,
    *,
    webhook_id: str | None = None,
    timestamp_s: int | None = None,
    raw: bytes | None = None,
) -> tuple[bytes, dict[str, str]]:
    """Returns (body, headers) as a Standard Webhooks sender would send them."""
    body = raw if raw is not None else json.dumps(payload).encode()
    headers = sign(
        secret,
        webhook_id or f"msg_{uuid.uuid4().hex}",
        int(time.time()) if timestamp_s is None else timestamp_s,
        body,
    )
    headers["content-type"] = "application/json"
    return body, headers


async def read_topic(bootstrap: str, topic: str) -> list[EventMessage]:
    """Returns every message on `topic` (all partitions, from the beginning), decoded."""
    return [EventMessage.decode(value) for _, value in await read_records(bootstrap, topic)]


async def read_records(bootstrap: str, topic: str) -> list[tuple[bytes | None, bytes]]:
    """Returns every (key, value) on `topic` (all partitions, from the beginning)."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,  # no group: every partition is assigned to this consumer
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        deadline = time.monotonic() + 30
        while not consumer.assignment():
            assert time.monotonic() < deadline, f"no partitions of {topic} within 30 s"
            await consumer.getmany(timeout_ms=100)
        tps = sorted(consumer.assignment(), key=lambda tp: tp.partition)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        records: list[tuple[bytes | None, bytes]] = []
        while [tp for tp in tps if await consumer.position(tp) < end[tp]]:
            assert time.monotonic() < deadline, "topic not read back within 30 s"
            batches = await consumer.getmany(*tps, timeout_ms=500)
            for batch in batches.values():
                records.extend((r.key, r.value) for r in batch if r.value is not None)
        return records
    finally:
        await consumer.stop()
