"""GET /features/{project}/{entity}/{id}, POST .../{entity}/batch, and user x entity
features in the user's answer, over the real online stores (Redis, SQLite); records
written by compute's own writer (`FeatureWriter`, entity records included)."""

from __future__ import annotations

from typing import Any

import pytest

from app.schemas.deployment import ConfigSnapshot
from app.schemas.pipeline import EventDefinition, EventField
from app.tiles.record import AppliedEvent
from runtime.compute.specs import build_specs, event_key
from runtime.compute.writer import FeatureWriter
from tests.factories import feature_document, pipeline_document, snapshot
from tests.runtime.serving.conftest import ServingKit

MINUTE = 60_000
ORDER = EventDefinition(
    name="order",
    fields=[
        EventField(name="product_id", type="string", entity="product"),
        EventField(name="category", type="string", entity="category"),
        EventField(name="price", type="number"),
    ],
)
HOSTILE = "$where/../x"


def make_snapshot(project_id: str) -> ConfigSnapshot:
    pipeline = pipeline_document(project_id, status="active", events=[ORDER])
    extras: list[tuple[str, dict[str, Any]]] = [
        ("orders", {"time_windows": ["1h"]}),
        ("product_buys", {"time_windows": ["1h"], "entity": "product"}),
        ("product_revenue", {"time_windows": ["1h"], "entity": "product",
                             "aggregation": "SUM", "field": "price"}),
        ("spend_by_category", {"time_windows": ["1h"], "entity": ["user", "category"],
                               "aggregation": "SUM", "field": "price"}),
    ]  # fmt: skip
    features = [
        feature_document(project_id, pipeline.id, name=name, source_event="order", **extra)
        for name, extra in extras
    ]
    return snapshot(project_id, 1, [pipeline], features)


async def orders(kit: ServingKit, snap: ConfigSnapshot) -> None:
    """u1 buys sku-1 (shoes, 10) and the hostile id (hats, 5); u2 buys sku-1 (shoes, 7)."""
    key = event_key(snap.pipelines[0].id, "order")
    now = kit.clock()
    rows: list[tuple[str, str, str, float]] = [
        ("u1", "sku-1", "shoes", 10.0),
        ("u1", HOSTILE, "hats", 5.0),
        ("u2", "sku-1", "shoes", 7.0),
    ]
    by_user: dict[str, list[AppliedEvent]] = {}
    for offset, (user, product, category, price) in enumerate(rows):
        props = {"product_id": product, "category": category, "price": price}
        event = AppliedEvent(0, offset, key, now - MINUTE, props, f"e{offset}")
        by_user.setdefault(user, []).append(event)
    writer = FeatureWriter(kit.store, now_ms=kit.clock)
    await writer.write_project(snap.project_id, build_specs(snap), by_user)


@pytest.fixture
async def deployed(kit: ServingKit, project_id: str) -> ConfigSnapshot:
    snap = make_snapshot(project_id)
    await kit.deploy(snap)
    await orders(kit, snap)
    return snap


class TestEntityReads:
    async def test_one_product_is_served_its_own_features(
        self, kit: ServingKit, project_id: str, deployed: ConfigSnapshot
    ) -> None:
        async with kit.client(project_id) as client:
            response = await client.get(f"/features/{project_id}/product/sku-1")
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["features"] == {"product_buys_1h": 2, "product_revenue_1h": 17.0}
        assert (body["entity"], body["id"], body["version"]) == ("product", "sku-1", 1)
        assert body["last_event_at"] is not None

    async def test_a_batch_answers_in_order_with_hostile_and_unknown_ids(
        self, kit: ServingKit, project_id: str, deployed: ConfigSnapshot
    ) -> None:
        ids = [HOSTILE, "nobody", "sku-1"]
        async with kit.client(project_id) as client:
            response = await client.post(
                f"/features/{project_id}/product/batch",
                json={"ids": ids, "features": ["product_buys_1h"]},
            )
        assert response.status_code == 200, response.text
        got = [
            (e["id"], e["features"], e["updated_at"] is None) for e in response.json()["entities"]
        ]
        assert got == [
            (HOSTILE, {"product_buys_1h": 1}, False),
            ("nobody", {"product_buys_1h": 0}, True),
            ("sku-1", {"product_buys_1h": 2}, False),
        ]

    async def test_the_user_answer_holds_the_user_x_category_object_and_no_entity_feature(
        self, kit: ServingKit, project_id: str, deployed: ConfigSnapshot
    ) -> None:
        async with kit.client(project_id) as client:
            response = await client.get(f"/features/{project_id}/users/u1")
            unknown = await client.get(f"/features/{project_id}/users/nobody")
        assert response.json()["features"] == {
            "orders_1h": 2,
            "spend_by_category_1h": {"shoes": 10.0, "hats": 5.0},
        }
        assert unknown.json()["features"] == {"orders_1h": 0, "spend_by_category_1h": {}}
        assert response.json()["last_event_at"] is not None


class TestEntityRefusals:
    @pytest.mark.parametrize("entity", ["brand", "category", "user", "Bad", "x" * 40])
    async def test_an_entity_without_features_is_a_404_in_the_envelope(
        self, kit: ServingKit, project_id: str, deployed: ConfigSnapshot, entity: str
    ) -> None:
        async with kit.client(project_id) as client:
            one = await client.get(f"/features/{project_id}/{entity}/sku-1")
            many = await client.post(f"/features/{project_id}/{entity}/batch", json={"ids": ["a"]})
        for response in (one, many):
            assert response.status_code == 404, response.text
            assert response.json()["error"] == "EntityNotFound"

    async def test_a_project_without_deployment_is_a_404(
        self, kit: ServingKit, project_id: str
    ) -> None:
        async with kit.client(project_id) as client:
            response = await client.get(f"/features/{project_id}/product/sku-1")
        assert (response.status_code, response.json()["error"]) == (404, "ProjectNotFound")

    async def test_another_projects_token_is_a_404_and_none_is_a_401(
        self, kit: ServingKit, project_id: str, deployed: ConfigSnapshot
    ) -> None:
        async with kit.client("other_shop") as client:
            foreign = await client.get(f"/features/{project_id}/product/sku-1")
        async with kit.client() as client:
            anonymous = await client.get(f"/features/{project_id}/product/sku-1")
        assert foreign.status_code == 404
        assert anonymous.status_code == 401

    @pytest.mark.parametrize(
        ("method", "path", "body", "loc"),
        [
            ("GET", "/product/" + "x" * 129, None, ["path", "entity_id"]),
            ("GET", "/product/a%0Ab", None, ["path", "entity_id"]),
            ("POST", "/product/batch", {"ids": ["ok", ""]}, ["body", "ids", 1]),
            ("POST", "/product/batch", {"ids": ["a\u0000"]}, ["body", "ids", 0]),
            ("POST", "/product/batch", {"ids": []}, ["body", "ids"]),
            ("POST", "/product/batch", {"user_ids": ["a"]}, ["body", "ids"]),
        ],
        ids=["long", "control", "empty", "nul", "no-ids", "user-key"],
    )
    async def test_ids_that_no_event_can_carry_are_a_422_naming_them(
        self,
        kit: ServingKit,
        project_id: str,
        deployed: ConfigSnapshot,
        method: str,
        path: str,
        body: Any,
        loc: list[Any],
    ) -> None:
        async with kit.client(project_id) as client:
            response = await client.request(method, f"/features/{project_id}{path}", json=body)
        assert response.status_code == 422, response.text
        assert response.json()["error"] == "ValidationError"
        assert loc in [f["loc"] for f in response.json()["fields"]]

    async def test_an_unknown_feature_key_is_a_422(
        self, kit: ServingKit, project_id: str, deployed: ConfigSnapshot
    ) -> None:
        async with kit.client(project_id) as client:
            response = await client.get(
                f"/features/{project_id}/product/sku-1", params={"features": "orders_1h"}
            )
        assert (response.status_code, response.json()["error"]) == (422, "UnknownFeature")

    async def test_a_batch_past_the_limit_is_a_413(
        self, kit: ServingKit, project_id: str, deployed: ConfigSnapshot
    ) -> None:
        async with kit.client(project_id) as client:
            response = await client.post(
                f"/features/{project_id}/product/batch", json={"ids": ["a"] * 51}
            )
        assert (response.status_code, response.json()["error"]) == (413, "BatchTooLarge")
