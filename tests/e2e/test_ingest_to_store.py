"""Signed events in through the ingestion app, on real Kafka and Redis, end as exactly the
oracle's tile state in the online store, for every aggregation and window.

Ingestion and compute run in this process, each inside its own lifespan (ingestion is
reached through httpx's ASGITransport). The deployed config and the webhook secrets are
published to Redis the way the config API publishes them. Compute runs on an injected
clock fixed at the test's start, so the expected record is one `apply_batch` of the
user's events at that instant; the values are also checked against a brute-force
oracle that knows nothing of tiles.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import httpx
import pytest

from app.core.config_loader import publish_config
from app.core.secrets import write_secrets
from app.core.service import Resources
from app.core.settings import BackendSettings, ComputeSettings, IngestionSettings
from app.schemas.pipeline import WebhookSecrets
from app.services.webhook_secrets import generate_secret
from app.tiles.record import AppliedEvent, apply_batch, serve
from runtime.compute import main as compute
from runtime.compute.specs import build_specs, event_key
from runtime.ingestion import main as ingestion
from runtime.ingestion.signature import sign
from tests.conftest import unique
from tests.e2e.conftest import CATCH_UP_BOUND_S
from tests.factories import new_id
from tests.runtime.compute.oracle import (
    RawEvent,
    all_aggregations,
    assert_same_values,
    config,
    feature,
    oracle_values,
    pipeline,
)
from tests.support.apps import in_process

pytestmark = [pytest.mark.kafka, pytest.mark.redis]

WINDOWS = ["5m", "1h", "24h", "7d", "30d"]
MINUTE = 60_000
DAY = 86_400_000
USERS = [f"shopper-{i}" for i in range(6)]


class Apps:
    """Ingestion and compute on shared backends, each inside its lifespan."""

    def __init__(self, backends: BackendSettings, now_ms: int) -> None:
        common: dict[str, Any] = {"environment": "development", "backends": backends}
        self.now_ms = now_ms
        self.ingest_app = ingestion.create_app(
            IngestionSettings(
                **common, rate_limit_project="100000/minute", rate_limit_pipeline="100000/minute"
            )
        )
        self.compute_app = compute.create_app(ComputeSettings(**common), now_ms=lambda: now_ms)
        self._stack = AsyncExitStack()
        self.ingest: httpx.AsyncClient

    async def __aenter__(self) -> Apps:
        await self._stack.enter_async_context(
            self.compute_app.router.lifespan_context(self.compute_app)
        )
        self.ingest = await self._stack.enter_async_context(
            in_process(self.ingest_app, "http://ingest", timeout=30)
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    @property
    def compute_resources(self) -> Resources:
        resources: Resources = self.compute_app.state.resources
        return resources

    def processed(self) -> int:
        registry = self.compute_resources.extras[compute.COMPUTE_METRICS].registry
        names = ("applied", "late", "duplicate", "future", "no_config")
        return int(sum(registry.get_sample_value(f"compute_events_{n}_total") or 0 for n in names))


@pytest.fixture
async def apps(distributed_backends: BackendSettings) -> AsyncIterator[Apps]:
    async with Apps(distributed_backends, int(time.time() * 1000)) as running:
        yield running


def envelope(e: RawEvent, event_id: str) -> dict[str, Any]:
    return {
        "event": e.event,
        "user_id": e.user_id,
        "timestamp": e.t_ms,
        "event_id": event_id,
        "properties": e.properties,
    }


async def send_batch(
    apps: Apps, project_id: str, pipeline_id: str, secret: str, body: dict[str, Any]
) -> dict[str, Any]:
    raw = json.dumps(body).encode()
    headers = sign(secret, f"msg_{uuid.uuid4().hex}", int(time.time()), raw)
    headers["content-type"] = "application/json"
    response = await apps.ingest.post(
        f"/ingest/{project_id}/{pipeline_id}/batch", content=raw, headers=headers
    )
    assert response.status_code == 202, response.text
    result: dict[str, Any] = response.json()
    return result


def random_events(rng: random.Random, pipeline_id: str, now_ms: int, n: int) -> list[RawEvent]:
    """Ages spread over every window (many recent, some up to 40 days: late for all)."""
    out = []
    for _ in range(n):
        span = rng.choice([10 * MINUTE, 3 * 60 * MINUTE, 3 * DAY, 40 * DAY])
        out.append(
            RawEvent(
                rng.choice(USERS),
                pipeline_id,
                "add_to_cart",
                now_ms - rng.randrange(0, span),
                {"product_id": f"sku-{rng.randrange(15)}", "price": rng.randrange(100, 9_999) / 4},
            )
        )
    return out


async def test_signed_events_produce_the_oracle_tile_state_for_every_aggregation_and_window(
    apps: Apps,
):
    project_id, shop, other = unique("shop"), new_id(), new_id()
    now = apps.now_ms
    # Two pipelines with the same event name: each feeds only its own features.
    features = [*all_aggregations(shop, WINDOWS), feature("other_adds", other, "COUNT", WINDOWS)]
    snapshot = config(
        project_id,
        1,
        [pipeline(shop, "add_to_cart"), pipeline(other, "add_to_cart")],
        features,
    )
    secrets = {shop: generate_secret(), other: generate_secret()}
    cache = apps.compute_resources.cache
    assert cache is not None
    for pipeline_id, secret in secrets.items():
        await write_secrets(cache, project_id, pipeline_id, WebhookSecrets(current=secret))
    await publish_config(cache, snapshot)

    rng = random.Random(61)
    sent: dict[str, list[tuple[RawEvent, str]]] = {
        shop: [(e, uuid.uuid4().hex) for e in random_events(rng, shop, now, 240)],
        other: [(e, uuid.uuid4().hex) for e in random_events(rng, other, now, 60)],
    }
    for pipeline_id, items in sent.items():
        for start in range(0, len(items), 100):
            chunk = items[start : start + 100]
            body = {"events": [envelope(e, event_id) for e, event_id in chunk]}
            result = await send_batch(apps, project_id, pipeline_id, secrets[pipeline_id], body)
            assert result["accepted"] == len(chunk), result
    # A storefront retrying a batch: ingestion drops it by event id, nothing counts twice.
    retry = {"events": [envelope(e, event_id) for e, event_id in sent[shop][:50]]}
    result = await send_batch(apps, project_id, shop, secrets[shop], retry)
    assert (result["accepted"], result["duplicates"]) == (0, 50)

    total = sum(len(items) for items in sent.values())
    async with asyncio.timeout(CATCH_UP_BOUND_S):
        while True:
            if apps.processed() >= total:
                break
            await asyncio.sleep(0.05)

    events = [e for items in sent.values() for e, _ in items]
    specs = build_specs(snapshot)
    store = apps.compute_resources.online_store
    assert store is not None
    stored_records = await store.get_many(project_id, USERS)
    for user, stored in zip(USERS, stored_records, strict=True):
        assert stored is not None
        # Per user, production order is ingestion order: one pipeline's batches, then the other's.
        mine = [e for e in events if e.user_id == user]
        applied = [
            AppliedEvent(0, i, event_key(e.pipeline_id, e.event), e.t_ms, e.properties)
            for i, e in enumerate(mine)
        ]
        expected = apply_batch(None, specs.by_event, applied, now).record
        assert stored.record["features"] == expected["features"], user
        assert_same_values(
            serve(stored.record, specs.specs, now), oracle_values(features, mine, now)
        )
