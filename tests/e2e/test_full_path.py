"""The whole path on real Kafka and Redis: config API → deploy → signed events through
ingestion → compute → serving, compared with a brute-force oracle for every feature and
window, then again after the (injected) clock moved past windows' ends.

The four apps run in this process, each inside its own lifespan, reached through httpx's
ASGITransport. Compute and serving share one injected clock; ingestion keeps the wall
clock (it checks webhook timestamps), which is why every event carries an explicit
event time at or before the shared clock's start.
"""

from __future__ import annotations

import asyncio
import json
import math
import secrets
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr
from standardwebhooks.webhooks import Webhook

import main as config_api
from app.core.settings import (
    AuthSettings,
    BackendSettings,
    ComputeSettings,
    ConfigApiSettings,
    IngestionSettings,
    ServingSettings,
)
from runtime.compute import main as compute
from runtime.ingestion import main as ingestion
from runtime.serving import main as serving
from tests.conftest import unique
from tests.e2e.conftest import CATCH_UP_BOUND_S
from tests.support.apps import bearer, in_process

pytestmark = [pytest.mark.kafka, pytest.mark.redis]

SECOND = 1000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR


class Clock:
    """The `now_ms` compute and serving share, moved by the test."""

    def __init__(self, now_ms: int) -> None:
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms


# -- the product, as a dashboard would configure it ------------------------------------------
EVENTS = [
    {
        "name": "add_to_cart",
        "fields": [
            {"name": "product_id", "type": "string", "required": True},
            {"name": "price", "type": "number", "required": True},
        ],
    },
    {"name": "page_view", "fields": [{"name": "page_type", "type": "string"}]},
]


@dataclass(frozen=True)
class Feature:
    name: str
    aggregation: str
    field: str | None
    windows: tuple[str, ...]
    source_event: str = "add_to_cart"

    def payload(self, pipeline_id: str) -> dict[str, Any]:
        return {
            "name": self.name,
            "pipeline_id": pipeline_id,
            "source_event": self.source_event,
            "aggregation": self.aggregation,
            "field": self.field,
            "time_windows": list(self.windows),
        }


# Every aggregation, several windows each.
FEATURES = [
    Feature("cart_adds", "COUNT", None, ("5m", "1h", "24h", "7d")),
    Feature("cart_value", "SUM", "price", ("5m", "1h", "24h")),
    Feature("avg_price", "AVG", "price", ("1h", "24h", "7d")),
    Feature("min_price", "MIN", "price", ("1h", "7d")),
    Feature("max_price", "MAX", "price", ("5m", "24h")),
    Feature("products", "COUNT_DISTINCT", "product_id", ("1h", "7d")),
    Feature("last_product", "LAST", "product_id", ("5m", "24h")),
    Feature("first_product", "FIRST", "product_id", ("1h", "7d")),
    Feature("page_views", "COUNT", None, ("5m", "24h"), "page_view"),
]
_WINDOW_MS = {"m": MINUTE, "h": HOUR, "d": DAY}


def window_ms(label: str) -> int:
    return int(label[:-1]) * _WINDOW_MS[label[-1]]


@dataclass(frozen=True)
class Sent:
    """One event as sent: user, name, event time, properties."""

    user_id: str
    event: str
    t_ms: int
    properties: dict[str, Any]


def oracle(events: Sequence[Sent], user_id: str, now_ms: int) -> dict[str, Any]:
    """Every feature x window of one user from the raw events in (now - W, now]."""
    out: dict[str, Any] = {}
    for f in FEATURES:
        for label in f.windows:
            lo = now_ms - window_ms(label)
            hits = sorted(
                (
                    e
                    for e in events
                    if e.user_id == user_id and e.event == f.source_event and lo < e.t_ms <= now_ms
                ),
                key=lambda e: e.t_ms,
            )
            values: list[Any] = [e.properties[f.field] for e in hits] if f.field else []
            key = f"{f.name}_{label}"
            match f.aggregation:
                case "COUNT":
                    out[key] = len(hits)
                case "SUM":
                    out[key] = math.fsum(values)
                case "AVG":
                    out[key] = math.fsum(values) / len(values) if values else None
                case "MIN":
                    out[key] = float(min(values)) if values else None
                case "MAX":
                    out[key] = float(max(values)) if values else None
                case "COUNT_DISTINCT":
                    out[key] = len(set(values))
                case "LAST":
                    out[key] = values[-1] if values else None
                case "FIRST":
                    out[key] = values[0] if values else None
    return out


def assert_clear_of_tile_edges(events: Sequence[Sent], now_ms: int) -> None:
    """The oracle counts (now - W, now] exactly, while a read covers whole tiles of W/60
    and may count an event up to one tile older than W (documented). The test's times
    keep every event more than a tile away from every window's old edge, so both agree;
    this guards the test's own choice of times."""
    for e in events:
        age = now_ms - e.t_ms
        for f in FEATURES:
            for label in f.windows:
                w = window_ms(label)
                assert not w - SECOND <= age <= w + w // 60 + SECOND, (e, label, now_ms)


# -- the four processes ------------------------------------------------------------------------
class Roles(Protocol):
    """What the scenario needs: a client per role (`api`, `ingest`, `serving`; one shared
    client in standalone), the shared clock, and tokens."""

    clock: Clock
    clients: dict[str, httpx.AsyncClient]

    def bearer(self, project_id: str) -> dict[str, str]: ...


class Platform:
    """Config API, ingestion, compute and serving on shared backends, started in-process."""

    def __init__(self, backends: BackendSettings, clock: Clock) -> None:
        self.auth = AuthSettings(secret=SecretStr(secrets.token_urlsafe(32)))
        self.clock = clock
        common: dict[str, Any] = {
            "environment": "production",
            "backends": backends,
            "auth": self.auth,
        }
        self.apps: dict[str, FastAPI] = {
            "api": config_api.create_app(ConfigApiSettings(**common)),
            "ingest": ingestion.create_app(
                IngestionSettings(
                    **common,
                    rate_limit_project="100000/minute",
                    rate_limit_pipeline="100000/minute",
                )
            ),
            "compute": compute.create_app(ComputeSettings(**common), now_ms=clock),
            "serving": serving.create_app(ServingSettings(**common), now_ms=clock),
        }
        self._stack = AsyncExitStack()
        self.clients: dict[str, httpx.AsyncClient] = {}

    async def __aenter__(self) -> Platform:
        for name, app in self.apps.items():
            self.clients[name] = await self._stack.enter_async_context(
                in_process(app, f"http://{name}", timeout=30)
            )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    def bearer(self, project_id: str) -> dict[str, str]:
        return bearer(self.auth, "e2e", [project_id])


async def configure(platform: Roles, project_id: str) -> tuple[str, str, int]:
    """Creates and activates the pipeline, creates FEATURES and deploys; returns
    (pipeline id, webhook secret, deployed version)."""
    api = platform.clients["api"]
    headers = platform.bearer(project_id)
    base = f"/api/v1/projects/{project_id}"
    created = await api.post(
        f"{base}/pipelines",
        json={"name": "storefront", "category": "behavioral", "events": EVENTS},
        headers=headers,
    )
    assert created.status_code == 201, created.text
    pipeline_id = created.json()["id"]
    activated = await api.post(f"{base}/pipelines/{pipeline_id}/activate", headers=headers)
    assert activated.status_code == 200, activated.text
    for feature in FEATURES:
        made = await api.post(
            f"{base}/features", json=feature.payload(pipeline_id), headers=headers
        )
        assert made.status_code == 201, made.text
    deployed = await api.post(f"{base}/deployments", headers=headers)
    assert deployed.status_code == 201, deployed.text
    webhook = await api.get(f"{base}/pipelines/{pipeline_id}/webhook", headers=headers)
    return pipeline_id, webhook.json()["secret"], deployed.json()["version"]


def envelope(e: Sent) -> dict[str, Any]:
    return {
        "event": e.event,
        "user_id": e.user_id,
        "timestamp": e.t_ms,
        "event_id": f"evt_{uuid.uuid4().hex}",
        "properties": e.properties,
    }


def signed(secret: str, body: bytes) -> dict[str, str]:
    """Standard Webhooks headers for the body, signed with the pipeline's secret."""
    msg_id = f"msg_{uuid.uuid4().hex}"
    now = datetime.now(UTC)
    return {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, now, body.decode()),
    }


async def send_single(ingest: httpx.AsyncClient, path: str, secret: str, e: Sent) -> None:
    body = json.dumps(envelope(e)).encode()
    response = await ingest.post(path, content=body, headers=signed(secret, body))
    assert response.status_code == 202, response.text


async def send_batch(ingest: httpx.AsyncClient, path: str, secret: str, batch: list[Sent]) -> None:
    body = json.dumps({"events": [envelope(e) for e in batch]}).encode()
    response = await ingest.post(f"{path}/batch", content=body, headers=signed(secret, body))
    assert response.status_code == 202, response.text
    assert response.json()["accepted"] == len(batch), response.text


async def read_users(platform: Roles, project_id: str, user_ids: list[str]) -> dict[str, Any]:
    response = await platform.clients["serving"].post(
        f"/features/{project_id}/users/batch",
        json={"user_ids": user_ids},
        headers=platform.bearer(project_id),
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


# -- the scenario ------------------------------------------------------------------------------
def cart(user: str, age_ms: int, t0: int, sku: str, price: float) -> Sent:
    return Sent(user, "add_to_cart", t0 - age_ms, {"product_id": sku, "price": price})


def view(user: str, age_ms: int, t0: int) -> Sent:
    return Sent(user, "page_view", t0 - age_ms, {"page_type": "product"})


def scenario(t0: int) -> list[Sent]:
    """Events of three users at ages spread over every window; a fourth user has none."""
    s = SECOND
    return [
        cart("alice", 20 * s, t0, "sku-1", 10.0),
        cart("alice", 100 * s, t0, "sku-2", 25.5),
        cart("alice", 250 * s, t0, "sku-1", 7.25),
        cart("alice", 25 * MINUTE, t0, "sku-3", 99.0),
        cart("alice", 2 * HOUR, t0, "sku-4", 3.0),
        cart("alice", 30_000 * s, t0, "sku-2", 12.0),
        cart("alice", 2 * DAY, t0, "sku-5", 50.0),
        cart("alice", 5 * DAY, t0, "sku-1", 1.5),
        view("alice", 10 * s, t0),
        view("alice", 200 * s, t0),
        view("alice", 4_000 * s, t0),
        view("alice", 90_000 * s, t0),
        cart("bob", 50 * s, t0, "sku-9", 5.0),
        cart("bob", 3_000 * s, t0, "sku-9", 5.0),
        cart("bob", 200_000 * s, t0, "sku-8", 8.0),
        view("bob", 120 * s, t0),
        view("carol", 30 * s, t0),
        view("carol", 400_000 * s, t0),
    ]


USERS = ["alice", "bob", "carol", "dave"]
# After t0: inside the 5m window, past it, past 1h, past 24h, past 5 days, past 7d.
LATER_S = [150, 360, 3_700, 7_300, 90_000, 450_000, 691_200]


async def wait_until_served(
    platform: Roles, project_id: str, events: Sequence[Sent], users: list[str]
) -> dict[str, Any]:
    """Polls serving until every user's features equal the oracle at the clock's now."""
    expected = [oracle(events, u, platform.clock()) for u in users]
    async with asyncio.timeout(CATCH_UP_BOUND_S):
        while True:
            body = await read_users(platform, project_id, users)
            if [u["features"] for u in body["users"]] == expected:
                return body
            await asyncio.sleep(0.1)


@pytest.fixture
async def platform(distributed_backends: BackendSettings) -> AsyncIterator[Platform]:
    clock = Clock(int(datetime.now(UTC).timestamp() * 1000))
    async with Platform(distributed_backends, clock) as running:
        yield running


async def drive_whole_path(platform: Roles) -> None:
    """Configure and deploy through the API, send signed events through ingestion, wait
    for compute, then compare serving with the oracle at t0 and at later clock times."""
    project_id = unique("shop")
    pipeline_id, secret, version = await configure(platform, project_id)
    t0 = platform.clock()
    events = scenario(t0)
    for later in [0, *LATER_S]:
        assert_clear_of_tile_edges(events, t0 + later * SECOND)

    ingest = platform.clients["ingest"]
    path = f"/ingest/{project_id}/{pipeline_id}"
    # Alice's events as one batch, the others one by one (both ingestion endpoints).
    await send_batch(ingest, path, secret, [e for e in events if e.user_id == "alice"])
    for e in events:
        if e.user_id != "alice":
            await send_single(ingest, path, secret, e)

    body = await wait_until_served(platform, project_id, events, USERS)
    assert body["version"] == version
    # Sanity of the scenario itself: something is non-empty in the smallest window.
    assert body["users"][0]["features"]["cart_adds_5m"] == 3
    assert body["users"][3]["features"] == oracle([], "dave", t0)

    serving = platform.clients["serving"]
    for later in LATER_S:
        platform.clock.now_ms = t0 + later * SECOND
        body = await read_users(platform, project_id, USERS)
        for user, served in zip(USERS, body["users"], strict=True):
            assert served["features"] == oracle(events, user, platform.clock()), (user, later)
        single = await serving.get(
            f"/features/{project_id}/users/alice", headers=platform.bearer(project_id)
        )
        assert single.json()["features"] == oracle(events, "alice", platform.clock())

    # A week and more later every window is empty again, without a single write.
    assert all(
        served["features"] == oracle([], served["user_id"], platform.clock())
        for served in body["users"]
    )


async def test_every_feature_and_window_matches_the_oracle_as_time_moves(platform: Platform):
    await drive_whole_path(platform)
