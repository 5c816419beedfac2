"""Filters, LAST_N, TOP_K and RECENCY through the config API: checked against the event
schema on write (a 422 naming the offending part) and at deploy, and shown in the
pending diff."""

from __future__ import annotations

from typing import Any

import pytest

from tests.api.conftest import Api
from tests.factories import feature_payload


async def _post(api: Api, pipeline_id: str, **overrides: Any) -> tuple[int, dict[str, Any]]:
    payload = feature_payload(pipeline_id, **overrides)
    response = await api.client.post(api.url("/features"), json=payload)
    return response.status_code, response.json()


SHOES = {"all": [{"field": "currency", "op": "eq", "value": "EUR"}]}


class TestAccepted:
    @pytest.mark.parametrize(
        "overrides",
        [
            {"aggregation": "COUNT", "filter": SHOES},
            {"aggregation": "SUM", "field": "price", "filter": {"any": [
                {"field": "price", "op": "gte", "value": 50},
                {"field": "currency", "op": "in", "value": ["EUR", "USD"]},
                {"field": "quantity", "op": "exists", "value": True},
            ]}},
            {"aggregation": "LAST_N", "field": "product_id", "size": 10},
            {"aggregation": "TOP_K", "field": "product_id", "size": 5, "filter": SHOES},
            {"aggregation": "RECENCY"},
        ],
        ids=["count-filtered", "sum-any-of", "last-n", "top-k-filtered", "recency"],
    )  # fmt: skip
    async def test_valid_definitions_are_created_and_read_back(
        self, api: Api, overrides: dict[str, Any]
    ) -> None:
        pipeline = await api.create_pipeline()
        status, body = await _post(api, pipeline["id"], **overrides)
        assert status == 201, body
        got = (await api.request("GET", f"/features/{body['id']}")).json()
        for key, value in overrides.items():
            assert got[key] == value


class TestRefused:
    @pytest.mark.parametrize(
        ("overrides", "loc", "kind"),
        [
            ({"aggregation": "LAST_N", "field": "product_id"}, ["body", "size"], "size_required"),
            ({"aggregation": "TOP_K", "field": "product_id", "size": 51}, ["body", "size"],
             "size_required"),
            ({"aggregation": "COUNT", "size": 3}, ["body", "size"], "size_not_allowed"),
            ({"aggregation": "RECENCY", "field": "price"}, ["body", "field"],
             "field_not_allowed"),
            ({"filter": {"all": [{"field": "colour", "op": "eq", "value": "red"}]}},
             ["body", "filter", "all", 0, "field"], "field_missing"),
            ({"filter": {"all": [{"field": "price", "op": "eq", "value": "cheap"}]}},
             ["body", "filter", "all", 0, "value"], "filter_value"),
            ({"filter": {"any": [{"field": "currency", "op": "gt", "value": "A"}]}},
             ["body", "filter", "any", 0, "value"], "filter_value"),
            ({"filter": {"all": [{"field": "currency", "op": "in", "value": []}]}},
             ["body", "filter", "all", 0, "value"], "filter_value"),
        ],
        ids=["no-size", "size-too-big", "size-on-count", "field-on-recency", "unknown-field",
             "wrong-type", "text-compared", "empty-in"],
    )  # fmt: skip
    async def test_definitions_that_do_not_fit_the_schema_are_a_422_naming_the_part(
        self, api: Api, overrides: dict[str, Any], loc: list[Any], kind: str
    ) -> None:
        pipeline = await api.create_pipeline()
        status, body = await _post(api, pipeline["id"], **overrides)
        assert status == 422, body
        assert [(f["loc"], f["type"]) for f in body["fields"]] == [(loc, kind)]

    async def test_a_filter_with_both_or_neither_list_is_a_422(self, api: Api) -> None:
        pipeline = await api.create_pipeline()
        for bad in ({}, {"all": SHOES["all"], "any": SHOES["all"]}):
            status, body = await _post(api, pipeline["id"], filter=bad)
            assert status == 422, body
            assert body["error"] == "ValidationError"


class TestDeployed:
    async def test_pending_diff_shows_filter_and_size_and_deploy_snapshots_them(
        self, api: Api
    ) -> None:
        pipeline = await api.create_active_pipeline()
        created = await api.create_feature(
            pipeline["id"], aggregation="TOP_K", field="product_id", size=3, filter=SHOES
        )
        pending = (await api.request("GET", "/deployments/pending")).json()
        described = [c["description"] for c in pending["changes"]]
        assert any("TOP_K 3 of product_id" in d and 'currency eq "EUR"' in d for d in described)
        deployed = await api.request("POST", "/deployments")
        assert deployed.status_code == 201, deployed.json()

        body = {**feature_payload(pipeline["id"], name=created["name"]), "revision": 1}
        body.update(aggregation="TOP_K", field="product_id", size=5, filter=SHOES)
        assert (await api.request("PUT", f"/features/{created['id']}", json=body)).is_success
        changes = (await api.request("GET", "/deployments/pending")).json()["changes"]
        assert [c["type"] for c in changes] == ["update"]
        assert "size 3 → 5" in changes[0]["description"]
