"""GET /features/{project}/users/{user} and POST .../users/batch over the real online
stores (Redis, SQLite), records written with compute's pure code, the clock injected."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from app.schemas.deployment import AggregateFeatureSnapshot, ConfigSnapshot
from tests.factories import feature_document, pipeline_document, snapshot
from tests.runtime.serving.conftest import ServingKit

MINUTE = 60_000
HOUR = 60 * MINUTE

# name, aggregation, field, windows, source event
FEATURES: list[tuple[str, str, str | None, list[str], str]] = [
    ("cart_adds", "COUNT", None, ["5m", "1h", "24h"], "add_to_cart"),
    ("cart_value", "SUM", "price", ["1h", "24h"], "add_to_cart"),
    ("avg_price", "AVG", "price", ["1h"], "add_to_cart"),
    ("min_price", "MIN", "price", ["24h"], "add_to_cart"),
    ("max_price", "MAX", "price", ["24h"], "add_to_cart"),
    ("products", "COUNT_DISTINCT", "product_id", ["24h"], "add_to_cart"),
    ("last_product", "LAST", "product_id", ["1h"], "add_to_cart"),
    ("first_product", "FIRST", "product_id", ["24h"], "add_to_cart"),
    ("purchases", "COUNT", None, ["7d"], "purchase"),
]

EMPTY = {
    "cart_adds_5m": 0,
    "cart_adds_1h": 0,
    "cart_adds_24h": 0,
    "cart_value_1h": 0,
    "cart_value_24h": 0,
    "avg_price_1h": None,
    "min_price_24h": None,
    "max_price_24h": None,
    "products_24h": 0,
    "last_product_1h": None,
    "first_product_24h": None,
    "purchases_7d": 0,
}


def make_snapshot(project_id: str, version: int = 1, extra: Any = ()) -> ConfigSnapshot:
    """An active pipeline (add_to_cart, purchase), every aggregation, one disabled feature."""
    pipeline = pipeline_document(project_id, status="active")
    pipeline = pipeline.model_copy(
        update={
            "events": [*pipeline.events, pipeline.events[0].model_copy(update={"name": "purchase"})]
        }
    )
    features = [
        feature_document(
            project_id,
            pipeline.id,
            name=name,
            aggregation=agg,
            field=field,
            time_windows=windows,
            source_event=event,
        )
        for name, agg, field, windows, event in [*FEATURES, *extra]
    ]
    features.append(feature_document(project_id, pipeline.id, name="switched_off", enabled=False))
    return snapshot(project_id, version, [pipeline], features)


async def deployed(kit: ServingKit, project_id: str) -> ConfigSnapshot:
    snap = make_snapshot(project_id)
    await kit.deploy(snap)
    return snap


async def shopper(kit: ServingKit, snap: ConfigSnapshot, user_id: str) -> None:
    """Three cart adds (1 min, 10 min and 2 h ago) and a purchase 3 min ago."""
    pipeline = snap.pipelines[0].id
    now = kit.clock()
    await kit.write_events(
        snap,
        user_id,
        [
            (pipeline, "add_to_cart", now - 2 * HOUR, {"product_id": "sku-1", "price": 20}),
            (pipeline, "add_to_cart", now - 10 * MINUTE, {"product_id": "sku-2", "price": 30}),
            (pipeline, "purchase", now - 3 * MINUTE, {"product_id": "sku-2"}),
            (pipeline, "add_to_cart", now - 1 * MINUTE, {"product_id": "sku-1", "price": 10}),
        ],
    )


SHOPPER_NOW = {
    "cart_adds_5m": 1,
    "cart_adds_1h": 2,
    "cart_adds_24h": 3,
    "cart_value_1h": 40.0,
    "cart_value_24h": 60.0,
    "avg_price_1h": 20.0,
    "min_price_24h": 10.0,
    "max_price_24h": 30.0,
    "products_24h": 2,
    "last_product_1h": "sku-1",
    "first_product_24h": "sku-1",
    "purchases_7d": 1,
}


class TestSingleUser:
    async def test_values_of_every_aggregation_are_served(self, kit: ServingKit, project_id: str):
        snap = await deployed(kit, project_id)
        await shopper(kit, snap, "u-1")
        async with kit.client(project_id) as client:
            response = await client.get(f"/features/{project_id}/users/u-1")
        assert response.status_code == 200
        body = response.json()
        assert body["features"] == SHOPPER_NOW
        assert body["user_id"] == "u-1"
        assert body["version"] == 1
        assert body["as_of"] == "2025-05-01T12:00:00.000Z"

    async def test_windows_slide_without_any_write(self, kit: ServingKit, project_id: str):
        snap = await deployed(kit, project_id)
        await shopper(kit, snap, "u-1")
        async with kit.client(project_id) as client:
            # the newest cart add is 1 min old: 5 more minutes (plus a 5 s tile) drop it
            kit.clock.advance(5 * 60 + 5)
            after_5m = (await client.get(f"/features/{project_id}/users/u-1")).json()
            kit.clock.advance(60 * 60)
            after_1h = (await client.get(f"/features/{project_id}/users/u-1")).json()
        assert after_5m["features"] == {**SHOPPER_NOW, "cart_adds_5m": 0}
        assert after_5m["as_of"] == "2025-05-01T12:05:05.000Z"
        assert after_1h["features"] == {
            **SHOPPER_NOW,
            "cart_adds_5m": 0,
            "cart_adds_1h": 0,
            "cart_value_1h": 0.0,
            "avg_price_1h": None,
            "last_product_1h": None,
        }

    async def test_user_without_events_gets_every_feature_empty(
        self, kit: ServingKit, project_id: str
    ):
        await deployed(kit, project_id)
        async with kit.client(project_id) as client:
            response = await client.get(f"/features/{project_id}/users/never-seen")
        assert response.status_code == 200
        assert response.json()["features"] == EMPTY

    async def test_disabled_features_are_not_served(self, kit: ServingKit, project_id: str):
        await deployed(kit, project_id)
        async with kit.client(project_id) as client:
            body = (await client.get(f"/features/{project_id}/users/u-1")).json()
        assert not any(key.startswith("switched_off") for key in body["features"])

    async def test_selection_serves_only_the_named_keys(self, kit: ServingKit, project_id: str):
        snap = await deployed(kit, project_id)
        await shopper(kit, snap, "u-1")
        async with kit.client(project_id) as client:
            response = await client.get(
                f"/features/{project_id}/users/u-1",
                params={"features": "cart_adds_5m, last_product_1h,,cart_adds_5m"},
            )
        assert response.json()["features"] == {"cart_adds_5m": 1, "last_product_1h": "sku-1"}

    async def test_unknown_selected_key_is_422_listing_it(self, kit: ServingKit, project_id: str):
        await deployed(kit, project_id)
        async with kit.client(project_id) as client:
            response = await client.get(
                f"/features/{project_id}/users/u-1",
                params={"features": "cart_adds_5m,cart_adds_2h,switched_off_5m"},
            )
        assert response.status_code == 422
        body = response.json()
        assert body["error"] == "UnknownFeature"
        assert "cart_adds_2h" in body["detail"]
        assert "switched_off_5m" in body["detail"]
        assert "cart_adds_5m" not in body["detail"]

    async def test_a_selection_longer_than_16384_characters_is_422(
        self, kit: ServingKit, project_id: str
    ):
        await deployed(kit, project_id)
        async with kit.client(project_id) as client:
            response = await client.get(
                f"/features/{project_id}/users/u-1", params={"features": "a," * 8193}
            )
        assert (response.status_code, response.json()["error"]) == (422, "ValidationError")
        [field] = response.json()["fields"]
        assert (field["loc"], field["type"]) == (["query", "features"], "string_too_long")

    async def test_a_new_deployment_is_served_under_its_version(
        self, kit: ServingKit, project_id: str
    ):
        snap = await deployed(kit, project_id)
        await shopper(kit, snap, "u-1")
        views = feature_document(
            project_id,
            snap.pipelines[0].id,
            name="views",
            source_event="purchase",
            time_windows=["1h"],
        )
        features = [*snap.features, AggregateFeatureSnapshot.model_validate(views.model_dump())]
        await kit.deploy(snap.model_copy(update={"version": 2, "features": features}))
        async with kit.client(project_id) as client, asyncio.timeout(10):
            while True:  # the loader hears the notice (or polls) within about a second
                body = (await client.get(f"/features/{project_id}/users/u-1")).json()
                if body["version"] == 2:
                    break
                await asyncio.sleep(0.05)
        # a new feature starts empty (compute fills it from new events); the others keep
        # their tiles because their fingerprints did not change
        assert body["features"] == {**SHOPPER_NOW, "views_1h": 0}


class TestBatch:
    async def test_results_follow_request_order_with_duplicates_answered_twice(
        self, kit: ServingKit, project_id: str
    ):
        snap = await deployed(kit, project_id)
        await shopper(kit, snap, "u-1")
        pipeline = snap.pipelines[0].id
        await kit.write_events(
            snap, "u-2", [(pipeline, "add_to_cart", kit.clock() - MINUTE, {"price": 5})]
        )
        ids = ["u-2", "ghost", "u-1", "u-2"]
        async with kit.client(project_id) as client:
            response = await client.post(
                f"/features/{project_id}/users/batch", json={"user_ids": ids}
            )
        assert response.status_code == 200
        body = response.json()
        assert [u["user_id"] for u in body["users"]] == ids
        assert [u["features"]["cart_adds_5m"] for u in body["users"]] == [1, 0, 1, 1]
        assert body["users"][1]["features"] == EMPTY
        assert body["users"][2]["features"] == SHOPPER_NOW
        assert body["version"] == 1

    async def test_a_batch_is_one_store_read(self, kit: ServingKit, project_id: str):
        await deployed(kit, project_id)
        async with kit.client(project_id) as client:
            before = await store_reads(client, "get_many")
            await client.post(
                f"/features/{project_id}/users/batch",
                json={"user_ids": [f"u-{n}" for n in range(40)]},
            )
            assert await store_reads(client, "get_many") == before + 1
            assert await store_reads(client, "get") == 0

    async def test_batch_selection(self, kit: ServingKit, project_id: str):
        snap = await deployed(kit, project_id)
        await shopper(kit, snap, "u-1")
        async with kit.client(project_id) as client:
            response = await client.post(
                f"/features/{project_id}/users/batch",
                json={"user_ids": ["u-1"], "features": ["purchases_7d"]},
            )
            unknown = await client.post(
                f"/features/{project_id}/users/batch",
                json={"user_ids": ["u-1"], "features": ["nope_1h"]},
            )
        [user] = response.json()["users"]
        assert (user["user_id"], user["features"]) == ("u-1", {"purchases_7d": 1})
        assert unknown.status_code == 422
        assert unknown.json()["error"] == "UnknownFeature"

    async def test_more_ids_than_the_limit_is_413(self, kit: ServingKit, project_id: str):
        await deployed(kit, project_id)
        async with kit.client(project_id) as client:
            at_limit = await client.post(
                f"/features/{project_id}/users/batch",
                json={"user_ids": [f"u-{n}" for n in range(50)]},
            )
            over = await client.post(
                f"/features/{project_id}/users/batch",
                json={"user_ids": [f"u-{n}" for n in range(51)]},
            )
            huge_body = await client.post(
                f"/features/{project_id}/users/batch",
                content=b'{"user_ids": ["' + b"x" * 200_000 + b'"]}',
                headers={"content-type": "application/json"},
            )
        assert at_limit.status_code == 200
        assert (over.status_code, over.json()["error"]) == (413, "BatchTooLarge")
        assert (huge_body.status_code, huge_body.json()["error"]) == (413, "BatchTooLarge")

    @pytest.mark.parametrize(
        ("body", "error"),
        [
            (b"{not json", "MalformedJSON"),
            (b'{"user_ids": []}', "ValidationError"),
            (b'{"user_ids": ["u-1"], "extra": 1}', "ValidationError"),
            (b'{"user_ids": "u-1"}', "ValidationError"),
            (b'{"user_ids": ["u-1", "$where"]}', "ValidationError"),
            (b"[]", "ValidationError"),
        ],
    )
    async def test_malformed_bodies_are_422(
        self, kit: ServingKit, project_id: str, body: bytes, error: str
    ):
        await deployed(kit, project_id)
        async with kit.client(project_id) as client:
            response = await client.post(
                f"/features/{project_id}/users/batch",
                content=body,
                headers={"content-type": "application/json"},
            )
        assert (response.status_code, response.json()["error"]) == (422, error)


async def store_reads(client: Any, op: str) -> float:
    text = (await client.get("/metrics")).text
    prefix = f'serving_store_read_seconds_count{{op="{op}"}} '
    lines = [line for line in text.splitlines() if line.startswith(prefix)]
    return float(lines[0].removeprefix(prefix)) if lines else 0.0


class TestMetrics:
    async def test_requests_batch_sizes_and_store_reads_are_exposed(
        self, kit: ServingKit, project_id: str
    ):
        await deployed(kit, project_id)
        async with kit.client(project_id) as client:
            await client.get(f"/features/{project_id}/users/u-1")
            await client.get(f"/features/{project_id}/users/u-1", params={"features": "x_1h"})
            await client.post(
                f"/features/{project_id}/users/batch", json={"user_ids": ["a", "b", "c"]}
            )
            text = (await client.get("/metrics")).text
        assert 'serving_requests_total{endpoint="single",status="200"} 1.0' in text
        assert 'serving_requests_total{endpoint="single",status="422"} 1.0' in text
        assert 'serving_requests_total{endpoint="batch",status="200"} 1.0' in text
        assert "serving_batch_users_sum 3.0" in text
        assert 'serving_store_read_seconds_count{op="get"} 1.0' in text
