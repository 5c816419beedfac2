"""Pipelines end to end through HTTP, on both config stores."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.api.conftest import Api
from tests.factories import event_payload, pipeline_payload


class TestCreateAndRead:
    async def test_created_pipeline_is_returned_and_readable(self, api: Api) -> None:
        payload = pipeline_payload(name="Storefront", description="web shop")
        response = await api.client.post(api.url("/pipelines"), json=payload)
        assert response.status_code == 201
        created = response.json()
        assert created["name"] == "Storefront"
        assert created["project_id"] == api.project
        assert created["revision"] == 1
        assert [e["name"] for e in created["events"]] == ["add_to_cart", "purchase"]
        assert created["features"] == []
        assert "webhook_secret" not in created

        got = await api.request("GET", f"/pipelines/{created['id']}")
        assert got.status_code == 200
        assert got.json() == {k: v for k, v in created.items() if k != "features"}

    async def test_pipeline_with_events_starts_inactive(self, api: Api) -> None:
        assert (await api.create_pipeline())["status"] == "inactive"

    async def test_pipeline_without_events_starts_configuring(self, api: Api) -> None:
        created = await api.create_pipeline(events=[])
        assert created["status"] == "configuring"

    async def test_category_is_required_without_a_template(self, api: Api) -> None:
        payload = pipeline_payload()
        del payload["category"]
        response = await api.client.post(api.url("/pipelines"), json=payload)
        assert response.status_code == 422
        assert response.json()["error"] == "ValidationFailed"
        assert response.json()["fields"][0]["loc"] == ["body", "category"]

    async def test_name_is_unique_within_a_project(self, api: Api) -> None:
        await api.create_pipeline(name="Storefront")
        response = await api.client.post(
            api.url("/pipelines"), json=pipeline_payload(name="Storefront")
        )
        assert response.status_code == 409
        assert response.json()["error"] == "PipelineNameTaken"

    async def test_same_name_is_fine_in_another_project(self, api: Api) -> None:
        await api.create_pipeline(name="Storefront")
        other = "other_" + api.project
        response = await api.client.post(
            api.url("/pipelines", other),
            json=pipeline_payload(name="Storefront"),
            headers=api.bearer([other]),
        )
        assert response.status_code == 201

    async def test_duplicate_event_names_are_refused(self, api: Api) -> None:
        payload = pipeline_payload(events=[event_payload("search"), event_payload("search")])
        response = await api.client.post(api.url("/pipelines"), json=payload)
        assert response.status_code == 422
        assert "duplicate event names: search" in response.json()["detail"]

    async def test_duplicate_field_names_are_refused(self, api: Api) -> None:
        fields = [{"name": "q", "type": "string"}, {"name": "q", "type": "number"}]
        payload = pipeline_payload(events=[event_payload("search", fields=fields)])
        response = await api.client.post(api.url("/pipelines"), json=payload)
        assert response.status_code == 422
        assert "duplicate field names: q" in response.json()["detail"]

    async def test_unknown_field_type_is_refused(self, api: Api) -> None:
        fields = [{"name": "q", "type": "array"}]
        payload = pipeline_payload(events=[event_payload("search", fields=fields)])
        response = await api.client.post(api.url("/pipelines"), json=payload)
        assert response.status_code == 422
        fields_ok = [{"name": "q", "type": t} for t in ("string",)]
        ok = pipeline_payload(events=[event_payload("search", fields=fields_ok)])
        assert (await api.client.post(api.url("/pipelines"), json=ok)).status_code == 201


class TestListing:
    async def test_list_pages_are_stable_and_complete(self, api: Api) -> None:
        created = [(await api.create_pipeline())["id"] for _ in range(5)]
        seen: list[str] = []
        for offset in (0, 2, 4):
            response = await api.request("GET", "/pipelines", params={"limit": 2, "offset": offset})
            assert response.status_code == 200
            page = response.json()
            assert (page["total"], page["limit"], page["offset"]) == (5, 2, offset)
            seen.extend(p["id"] for p in page["items"])
        assert seen == created
        again = await api.request("GET", "/pipelines", params={"limit": 2, "offset": 2})
        assert [p["id"] for p in again.json()["items"]] == created[2:4]

    async def test_list_filters_by_status_and_category(self, api: Api) -> None:
        a = await api.create_pipeline(category="behavioral")
        b = await api.create_pipeline(category="transaction")
        await api.create_pipeline(category="transaction", events=[])
        await api.request("POST", f"/pipelines/{b['id']}/activate")

        def ids(response: object) -> list[str]:
            return [p["id"] for p in response.json()["items"]]  # type: ignore[attr-defined]

        active = await api.request("GET", "/pipelines", params={"status": "active"})
        assert ids(active) == [b["id"]]
        behavioral = await api.request("GET", "/pipelines", params={"category": "behavioral"})
        assert ids(behavioral) == [a["id"]]
        both = await api.request(
            "GET", "/pipelines", params={"status": "inactive", "category": "transaction"}
        )
        assert ids(both) == []

    async def test_list_limits_are_bounded(self, api: Api) -> None:
        for params in ({"limit": 0}, {"limit": 201}, {"offset": -1}, {"status": "paused"}):
            response = await api.request("GET", "/pipelines", params=params)
            assert response.status_code == 422, params
            assert response.json()["error"] == "ValidationError"
        ok = await api.request("GET", "/pipelines", params={"limit": 200, "offset": 0})
        assert ok.status_code == 200
        assert ok.json()["limit"] == 200


class TestReplace:
    async def test_put_replaces_and_bumps_the_revision(self, api: Api) -> None:
        created = await api.create_pipeline()
        body = {
            "name": "Renamed",
            "description": "new",
            "category": "marketing",
            "events": [event_payload("add_to_cart"), event_payload("campaign_click")],
            "revision": 1,
        }
        response = await api.request("PUT", f"/pipelines/{created['id']}", json=body)
        assert response.status_code == 200
        updated = response.json()
        assert (updated["name"], updated["category"], updated["revision"]) == (
            "Renamed",
            "marketing",
            2,
        )
        assert [e["name"] for e in updated["events"]] == ["add_to_cart", "campaign_click"]
        assert updated["created_at"] == created["created_at"]

    async def test_put_on_a_stale_revision_is_a_conflict_naming_the_current_one(
        self, api: Api
    ) -> None:
        created = await api.create_pipeline()
        body: dict[str, Any] = {"name": "x", "category": "behavioral", "revision": 1}
        body["events"] = [event_payload("add_to_cart")]
        first = await api.request("PUT", f"/pipelines/{created['id']}", json=body)
        assert first.status_code == 200
        second = await api.request("PUT", f"/pipelines/{created['id']}", json=body)
        assert second.status_code == 409
        assert second.json()["error"] == "RevisionConflict"
        assert "current revision is 2" in second.json()["detail"]

    async def test_two_concurrent_puts_on_one_revision_give_one_200_and_one_409(
        self, api: Api
    ) -> None:
        created = await api.create_pipeline()
        bodies = [
            {
                "name": f"tab {i}",
                "category": "behavioral",
                "events": [event_payload("add_to_cart")],
                "revision": 1,
            }
            for i in range(2)
        ]
        responses = await asyncio.gather(
            *(api.request("PUT", f"/pipelines/{created['id']}", json=b) for b in bodies)
        )
        assert sorted(r.status_code for r in responses) == [200, 409]
        loser = next(r for r in responses if r.status_code == 409)
        assert loser.json()["error"] == "RevisionConflict"
        winner = next(r for r in responses if r.status_code == 200).json()
        stored = (await api.request("GET", f"/pipelines/{created['id']}")).json()
        assert (stored["name"], stored["revision"]) == (winner["name"], 2)

    async def test_put_onto_a_taken_name_is_a_conflict(self, api: Api) -> None:
        await api.create_pipeline(name="Taken")
        created = await api.create_pipeline()
        body = {"name": "Taken", "category": "behavioral", "events": [], "revision": 1}
        response = await api.request("PUT", f"/pipelines/{created['id']}", json=body)
        assert response.status_code == 409
        assert response.json()["error"] == "PipelineNameTaken"

    async def test_put_removing_an_event_a_feature_uses_is_refused(self, api: Api) -> None:
        created = await api.create_pipeline()
        await api.create_feature(created["id"], source_event="purchase")
        body = {
            "name": "x",
            "category": "behavioral",
            "events": [event_payload("add_to_cart")],
            "revision": 1,
        }
        response = await api.request("PUT", f"/pipelines/{created['id']}", json=body)
        assert response.status_code == 409
        assert response.json()["error"] == "EventInUse"
        body["events"] = [event_payload("purchase")]
        assert (
            await api.request("PUT", f"/pipelines/{created['id']}", json=body)
        ).status_code == 200

    async def test_put_retyping_an_aggregated_field_is_refused(self, api: Api) -> None:
        created = await api.create_pipeline()
        await api.create_feature(created["id"], aggregation="SUM", field="price")
        fields = [{"name": "price", "type": "string"}]
        body = {
            "name": "x",
            "category": "behavioral",
            "events": [event_payload("add_to_cart", fields=fields), event_payload("purchase")],
            "revision": 1,
        }
        response = await api.request("PUT", f"/pipelines/{created['id']}", json=body)
        assert response.status_code == 409
        assert response.json()["error"] == "FieldInUse"

    async def test_put_needs_a_revision(self, api: Api) -> None:
        created = await api.create_pipeline()
        body = {"name": "x", "category": "behavioral", "events": []}
        response = await api.request("PUT", f"/pipelines/{created['id']}", json=body)
        assert response.status_code == 422
        assert response.json()["fields"][0]["loc"] == ["body", "revision"]


class TestDelete:
    async def test_delete_removes_the_pipeline(self, api: Api) -> None:
        created = await api.create_pipeline()
        response = await api.request("DELETE", f"/pipelines/{created['id']}")
        assert response.status_code == 204
        assert response.content == b""
        assert (await api.request("GET", f"/pipelines/{created['id']}")).status_code == 404
        again = await api.request("DELETE", f"/pipelines/{created['id']}")
        assert again.status_code == 404
        assert again.json()["error"] == "PipelineNotFound"

    async def test_delete_is_refused_while_features_use_the_pipeline(self, api: Api) -> None:
        created = await api.create_pipeline()
        feature = await api.create_feature(created["id"], name="cart_adds")
        response = await api.request("DELETE", f"/pipelines/{created['id']}")
        assert response.status_code == 409
        assert response.json()["error"] == "PipelineInUse"
        assert "cart_adds" in response.json()["detail"]
        assert (await api.request("GET", f"/features/{feature['id']}")).status_code == 200

    async def test_cascade_delete_removes_the_features_too(self, api: Api) -> None:
        created = await api.create_pipeline()
        other = await api.create_pipeline()
        doomed = await api.create_feature(created["id"])
        kept = await api.create_feature(other["id"])
        response = await api.request(
            "DELETE", f"/pipelines/{created['id']}", params={"cascade": "true"}
        )
        assert response.status_code == 204
        assert (await api.request("GET", f"/features/{doomed['id']}")).status_code == 404
        assert (await api.request("GET", f"/features/{kept['id']}")).status_code == 200


class TestStatus:
    async def test_activate_then_deactivate(self, api: Api) -> None:
        created = await api.create_pipeline()
        active = await api.request("POST", f"/pipelines/{created['id']}/activate")
        assert active.status_code == 200
        assert (active.json()["status"], active.json()["revision"]) == ("active", 2)
        again = await api.request("POST", f"/pipelines/{created['id']}/activate")
        assert (again.json()["status"], again.json()["revision"]) == ("active", 2)
        inactive = await api.request("POST", f"/pipelines/{created['id']}/deactivate")
        assert (inactive.json()["status"], inactive.json()["revision"]) == ("inactive", 3)

    async def test_a_pipeline_without_enabled_events_cannot_be_activated(self, api: Api) -> None:
        empty = await api.create_pipeline(events=[])
        response = await api.request("POST", f"/pipelines/{empty['id']}/activate")
        assert response.status_code == 409
        assert response.json()["error"] == "PipelineNotReady"
        disabled = await api.create_pipeline(events=[event_payload("search", enabled=False)])
        response = await api.request("POST", f"/pipelines/{disabled['id']}/activate")
        assert response.status_code == 409

    async def test_deactivating_a_configuring_pipeline_keeps_it_configuring(self, api: Api) -> None:
        empty = await api.create_pipeline(events=[])
        response = await api.request("POST", f"/pipelines/{empty['id']}/deactivate")
        assert response.status_code == 200
        assert response.json()["status"] == "configuring"

    async def test_an_active_pipeline_stays_active_across_edits(self, api: Api) -> None:
        created = await api.create_pipeline()
        await api.request("POST", f"/pipelines/{created['id']}/activate")
        body = {
            "name": "x",
            "category": "behavioral",
            "events": [event_payload("search")],
            "revision": 2,
        }
        response = await api.request("PUT", f"/pipelines/{created['id']}", json=body)
        assert response.json()["status"] == "active"
