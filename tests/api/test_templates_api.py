"""Pipeline templates: listed for the six categories, and a starting point for pipelines."""

from __future__ import annotations

import pytest

from app.services.templates import list_templates
from tests.api.conftest import Api
from tests.factories import event_payload

TEMPLATE_NAMES = [t.name for t in list_templates()]


class TestListing:
    async def test_one_template_per_category_with_the_plans_events(self, api: Api) -> None:
        response = await api.client.get("/api/v1/pipeline-templates")
        assert response.status_code == 200
        templates = {t["category"]: t for t in response.json()}
        assert set(templates) == {
            "behavioral",
            "transaction",
            "context",
            "marketing",
            "trust",
            "realtime",
        }
        events = {c: [e["name"] for e in t["events"]] for c, t in templates.items()}
        assert events["behavioral"] == [
            "page_view",
            "product_view",
            "add_to_cart",
            "remove_from_cart",
            "search",
        ]
        assert events["transaction"] == ["checkout_started", "purchase", "refund"]
        assert all(t["events"] and t["suggested_features"] for t in templates.values())

    async def test_one_template_by_name(self, api: Api) -> None:
        response = await api.client.get("/api/v1/pipeline-templates/transaction")
        assert response.status_code == 200
        spend = next(f for f in response.json()["suggested_features"] if f["name"] == "spend")
        assert (spend["aggregation"], spend["field"], spend["time_windows"]) == (
            "SUM",
            "revenue",
            ["30d"],
        )

    async def test_an_unknown_template_is_not_found(self, api: Api) -> None:
        response = await api.client.get("/api/v1/pipeline-templates/loyalty")
        assert (response.status_code, response.json()["error"]) == (404, "TemplateNotFound")


class TestCreateFromTemplate:
    @pytest.mark.parametrize("name", TEMPLATE_NAMES)
    async def test_every_template_creates_a_pipeline_with_its_features(
        self, api: Api, name: str
    ) -> None:
        payload = {"name": f"From {name}", "template": name, "with_features": True}
        response = await api.client.post(api.url("/pipelines"), json=payload)
        assert response.status_code == 201, response.text
        created = response.json()
        template = next(t for t in list_templates() if t.name == name)
        assert created["category"] == template.category
        assert [e["name"] for e in created["events"]] == [e.name for e in template.events]
        assert created["status"] == "inactive"
        assert sorted(f["name"] for f in created["features"]) == sorted(
            f.name for f in template.suggested_features
        )
        assert all(f["pipeline_id"] == created["id"] for f in created["features"])
        listed = await api.request("GET", "/features", params={"pipeline_id": created["id"]})
        assert listed.json()["total"] == len(template.suggested_features)

    async def test_without_with_features_only_the_pipeline_is_created(self, api: Api) -> None:
        response = await api.client.post(
            api.url("/pipelines"), json={"name": "Orders", "template": "transaction"}
        )
        assert response.status_code == 201
        assert response.json()["features"] == []
        assert (await api.request("GET", "/features")).json()["total"] == 0

    async def test_body_events_and_category_override_the_template(self, api: Api) -> None:
        payload = {
            "name": "Custom",
            "template": "behavioral",
            "category": "realtime",
            "events": [event_payload("search")],
        }
        created = (await api.client.post(api.url("/pipelines"), json=payload)).json()
        assert (created["category"], [e["name"] for e in created["events"]]) == (
            "realtime",
            ["search"],
        )

    async def test_an_unknown_template_in_the_body_is_invalid(self, api: Api) -> None:
        response = await api.client.post(
            api.url("/pipelines"), json={"name": "x", "template": "loyalty"}
        )
        assert response.status_code == 422
        assert response.json()["fields"][0]["loc"] == ["body", "template"]

    async def test_with_features_needs_a_template(self, api: Api) -> None:
        payload = {"name": "x", "category": "trust", "with_features": True}
        response = await api.client.post(api.url("/pipelines"), json=payload)
        assert response.status_code == 422
        assert response.json()["fields"][0]["loc"] == ["body", "with_features"]

    async def test_suggested_features_must_fit_overridden_events(self, api: Api) -> None:
        payload = {
            "name": "x",
            "template": "transaction",
            "with_features": True,
            "events": [event_payload("purchase")],
        }
        response = await api.client.post(api.url("/pipelines"), json=payload)
        assert response.status_code == 422
        assert (await api.request("GET", "/pipelines")).json()["total"] == 0

    async def test_taken_feature_names_refuse_the_whole_request(self, api: Api) -> None:
        payload = {"name": "First", "template": "trust", "with_features": True}
        assert (await api.client.post(api.url("/pipelines"), json=payload)).status_code == 201
        second = await api.client.post(api.url("/pipelines"), json={**payload, "name": "Second"})
        assert (second.status_code, second.json()["error"]) == (409, "FeatureNameTaken")
        assert (await api.request("GET", "/pipelines")).json()["total"] == 1
        # Without the features the same template is fine twice.
        plain = {"name": "Second", "template": "trust"}
        assert (await api.client.post(api.url("/pipelines"), json=plain)).status_code == 201
