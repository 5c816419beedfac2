"""What every fault case sends and expects: one pipeline whose features cover every
aggregation, events spread over a few users, and the brute-force oracle over the events
that were accepted (one per event id).

Every event is at most a few minutes old and every window is 24 h or 7 d, so nothing
leaves a window while a case runs: the oracle is the aggregate over all accepted events,
whatever the wall clock reads when serving is compared with it.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

import httpx

EVENT_SCHEMA = [
    {
        "name": "add_to_cart",
        "fields": [
            {"name": "product_id", "type": "string", "required": True},
            {"name": "price", "type": "number", "required": True},
        ],
    }
]

# (name, aggregation, field, window): every aggregation once.
FEATURES: list[tuple[str, str, str | None, str]] = [
    ("cart_adds", "COUNT", None, "24h"),
    ("cart_value", "SUM", "price", "24h"),
    ("avg_price", "AVG", "price", "7d"),
    ("min_price", "MIN", "price", "24h"),
    ("max_price", "MAX", "price", "7d"),
    ("products", "COUNT_DISTINCT", "product_id", "24h"),
    ("last_product", "LAST", "product_id", "24h"),
    ("first_product", "FIRST", "product_id", "7d"),
]
COUNT_KEY = "cart_adds_24h"


@dataclass(frozen=True)
class Event:
    """One event as the storefront sends it (and resends it, with the same event id)."""

    event_id: str
    user_id: str
    t_ms: int
    product_id: str
    price: float

    def envelope(self) -> dict[str, Any]:
        return {
            "event": "add_to_cart",
            "user_id": self.user_id,
            "timestamp": self.t_ms,
            "event_id": self.event_id,
            "properties": {"product_id": self.product_id, "price": self.price},
        }


def make_events(case: str, count: int, users: int, now_ms: int) -> list[Event]:
    """`count` events of `users` users, all within the last two minutes, each with its own
    event time (LAST and FIRST have one answer) and a price in quarters (sums are exact)."""
    rng = random.Random(case)
    return [
        Event(
            event_id=f"evt-{case}-{i}",
            user_id=f"user-{rng.randrange(users)}",
            t_ms=now_ms - 1_000 - (i * 97) % 120_000,
            product_id=f"sku-{rng.randrange(30)}",
            price=rng.randrange(1, 400) / 4,
        )
        for i in range(count)
    ]


def oracle(events: list[Event], user_id: str) -> dict[str, Any]:
    """Every feature of `user_id` computed from scratch over `events` (one per event id)."""
    mine = sorted((e for e in events if e.user_id == user_id), key=lambda e: e.t_ms)
    prices = [e.price for e in mine]
    products = [e.product_id for e in mine]
    out: dict[str, Any] = {}
    for name, aggregation, _, window in FEATURES:
        key = f"{name}_{window}"
        match aggregation:
            case "COUNT":
                out[key] = len(mine)
            case "SUM":
                out[key] = math.fsum(prices)
            case "AVG":
                out[key] = math.fsum(prices) / len(prices) if prices else None
            case "MIN":
                out[key] = min(prices) if prices else None
            case "MAX":
                out[key] = max(prices) if prices else None
            case "COUNT_DISTINCT":
                out[key] = len(set(products))
            case "LAST":
                out[key] = products[-1] if products else None
            case "FIRST":
                out[key] = products[0] if products else None
    return out


async def configure(
    api: httpx.AsyncClient, headers: dict[str, str], project_id: str
) -> tuple[str, str]:
    """Creates and activates the pipeline, creates FEATURES and deploys, through the config
    API as a dashboard would; returns (pipeline id, webhook secret)."""
    base = f"/api/v1/projects/{project_id}"
    created = await api.post(
        f"{base}/pipelines",
        json={"name": "storefront", "category": "behavioral", "events": EVENT_SCHEMA},
        headers=headers,
    )
    assert created.status_code == 201, created.text
    pipeline_id: str = created.json()["id"]
    activated = await api.post(f"{base}/pipelines/{pipeline_id}/activate", headers=headers)
    assert activated.status_code == 200, activated.text
    for name, aggregation, field, window in FEATURES:
        made = await api.post(
            f"{base}/features",
            json={
                "name": name,
                "pipeline_id": pipeline_id,
                "source_event": "add_to_cart",
                "aggregation": aggregation,
                "field": field,
                "time_windows": [window],
            },
            headers=headers,
        )
        assert made.status_code == 201, made.text
    deployed = await api.post(f"{base}/deployments", headers=headers)
    assert deployed.status_code == 201, deployed.text
    webhook = await api.get(f"{base}/pipelines/{pipeline_id}/webhook", headers=headers)
    assert webhook.status_code == 200, webhook.text
    secret: str = webhook.json()["secret"]
    return pipeline_id, secret
