"""Entity keys on event schemas and features per entity or per user x entity, through the
config API: checked against the event schema on write (a 422 naming the part), guarded
against edits that would break them (409), and shown in the pending diff."""

from __future__ import annotations

from typing import Any

import pytest

from tests.api.conftest import Api
from tests.factories import event_payload, feature_payload, field_payload


def order_event(**key_overrides: Any) -> dict[str, Any]:
    """`order` with product_id (entity product), category (entity category), price."""
    fields = [
        field_payload("product_id", "string", required=True, entity="product"),
        field_payload("category", "string", entity="category"),
        field_payload("store_no", "number", entity="store"),
        field_payload("price", "number"),
        field_payload("gift", "boolean"),
    ]
    for field in fields:
        field.update(key_overrides.get(field["name"], {}))
    return event_payload("order", fields=fields)


async def _pipeline(api: Api, *, active: bool = False) -> dict[str, Any]:
    create = api.create_active_pipeline if active else api.create_pipeline
    return await create(events=[order_event()])


async def _post(api: Api, pipeline_id: str, **overrides: Any) -> tuple[int, dict[str, Any]]:
    payload = feature_payload(pipeline_id, source_event="order", **overrides)
    response = await api.client.post(api.url("/features"), json=payload)
    return response.status_code, response.json()


class TestEventSchemaEntityKeys:
    async def test_declared_entity_keys_are_read_back(self, api: Api) -> None:
        pipeline = await _pipeline(api)
        fields = {f["name"]: f for f in pipeline["events"][0]["fields"]}
        assert fields["product_id"]["entity"] == "product"
        assert fields["store_no"]["entity"] == "store"
        assert fields["price"]["entity"] is None

    @pytest.mark.parametrize(
        ("overrides", "words"),
        [
            ({"gift": {"entity": "gift"}}, "string or number field, not boolean"),
            ({"category": {"entity": "user"}}, "reserved"),
            ({"category": {"entity": "users"}}, "reserved"),
            ({"category": {"entity": "product"}}, "one field per entity key"),
            ({"category": {"entity": "Bad-Name"}}, "pattern"),
        ],
        ids=["boolean", "user", "users", "twice", "bad-name"],
    )
    async def test_an_entity_key_that_cannot_name_an_entity_is_a_422(
        self, api: Api, overrides: dict[str, Any], words: str
    ) -> None:
        response = await api.request(
            "POST", "/pipelines", json={"name": "p", "events": [order_event(**overrides)]}
        )
        assert response.status_code == 422, response.text
        body = response.json()
        assert body["error"] == "ValidationError"
        assert any(words in f["msg"] for f in body["fields"]), body
        assert all(f["loc"][:3] == ["body", "events", 0] for f in body["fields"]), body

    async def test_removing_an_entity_key_a_feature_uses_is_a_409(self, api: Api) -> None:
        pipeline = await _pipeline(api)
        status, _ = await _post(api, pipeline["id"], entity="product")
        assert status == 201
        event = order_event(product_id={"entity": None})
        response = await api.request("PUT", f"/pipelines/{pipeline['id']}/events/order", json=event)
        assert response.status_code == 409, response.text
        assert response.json()["error"] == "FieldInUse"
        assert "entity 'product'" in response.json()["detail"]


class TestAccepted:
    @pytest.mark.parametrize(
        "overrides",
        [
            {"entity": "user"},
            {"entity": "product"},
            {"entity": "store", "aggregation": "SUM", "field": "price"},
            {"entity": ["user", "category"], "aggregation": "SUM", "field": "price"},
            {"entity": ["user", "product"], "aggregation": "TOP_K", "field": "category",
             "size": 3},
        ],
        ids=["user", "product", "integer-key", "user-x-category", "user-x-product-top-k"],
    )  # fmt: skip
    async def test_valid_definitions_are_created_and_read_back(
        self, api: Api, overrides: dict[str, Any]
    ) -> None:
        pipeline = await _pipeline(api)
        status, body = await _post(api, pipeline["id"], **overrides)
        assert status == 201, body
        got = (await api.request("GET", f"/features/{body['id']}")).json()
        assert got["entity"] == overrides["entity"]

    async def test_a_feature_without_entity_is_per_user(self, api: Api) -> None:
        pipeline = await _pipeline(api)
        status, body = await _post(api, pipeline["id"])
        assert status == 201, body
        assert body["entity"] == "user"


class TestRefused:
    @pytest.mark.parametrize(
        ("entity", "loc"),
        [("brand", ["body", "entity"]), (["user", "brand"], ["body", "entity", 1])],
        ids=["entity", "pair"],
    )
    async def test_an_entity_the_source_event_does_not_declare_is_a_422_naming_it(
        self, api: Api, entity: Any, loc: list[Any]
    ) -> None:
        pipeline = await _pipeline(api)
        status, body = await _post(api, pipeline["id"], entity=entity)
        assert status == 422, body
        assert [(f["loc"], f["type"]) for f in body["fields"]] == [(loc, "entity_missing")]
        assert "category, product, store" in body["fields"][0]["msg"]

    @pytest.mark.parametrize(
        "entity",
        ["users", ["product", "user"], ["user"], ["user", "user"], ["user", "a", "b"], "$where",
         "../x", 7],
        ids=["users", "reversed", "one", "user-user", "three", "operator", "path", "number"],
    )  # fmt: skip
    async def test_a_malformed_entity_is_a_422(self, api: Api, entity: Any) -> None:
        pipeline = await _pipeline(api)
        status, body = await _post(api, pipeline["id"], entity=entity)
        assert status == 422, body
        assert body["error"] == "ValidationError"


class TestDeployed:
    async def test_pending_diff_shows_the_entity_and_deploy_snapshots_it(self, api: Api) -> None:
        pipeline = await _pipeline(api, active=True)
        created = await api.create_feature(
            pipeline["id"], source_event="order", entity=["user", "category"]
        )
        pending = (await api.request("GET", "/deployments/pending")).json()
        described = [c["description"] for c in pending["changes"]]
        assert any("per user x category" in d for d in described), described
        assert (await api.request("POST", "/deployments")).status_code == 201

        body = {**feature_payload(pipeline["id"], name=created["name"]), "revision": 1}
        body.update(source_event="order", entity="product")
        assert (await api.request("PUT", f"/features/{created['id']}", json=body)).is_success
        changes = (await api.request("GET", "/deployments/pending")).json()["changes"]
        assert [c["type"] for c in changes] == ["update"]
        assert "entity user x category → product" in changes[0]["description"]
        deployed = (await api.request("POST", "/deployments")).json()
        live = (await api.request("GET", f"/deployments/{deployed['id']}")).json()
        assert deployed["status"] == "success", deployed
        assert live["version"] == 2
