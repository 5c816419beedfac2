"""Features end to end: every definition rule with a failing and a passing case."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.api.conftest import Api
from tests.factories import event_payload, feature_payload, field_payload


async def _post(api: Api, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    response = await api.client.post(api.url("/features"), json=payload)
    return response.status_code, response.json()


class TestCrud:
    async def test_created_feature_reads_back(self, api: Api) -> None:
        pipeline = await api.create_pipeline()
        created = await api.create_feature(pipeline["id"], name="cart_adds")
        assert (created["name"], created["revision"], created["project_id"]) == (
            "cart_adds",
            1,
            api.project,
        )
        got = await api.request("GET", f"/features/{created['id']}")
        assert got.status_code == 200
        assert got.json() == created

    async def test_put_replaces_on_the_current_revision_only(self, api: Api) -> None:
        pipeline = await api.create_pipeline()
        created = await api.create_feature(pipeline["id"])
        body = {**feature_payload(pipeline["id"], name=created["name"]), "revision": 1}
        body.update(aggregation="SUM", field="price", enabled=False)
        response = await api.request("PUT", f"/features/{created['id']}", json=body)
        assert response.status_code == 200
        assert (response.json()["aggregation"], response.json()["revision"]) == ("SUM", 2)
        stale = await api.request("PUT", f"/features/{created['id']}", json=body)
        assert stale.status_code == 409
        assert stale.json()["error"] == "RevisionConflict"
        assert "current revision is 2" in stale.json()["detail"]

    async def test_two_concurrent_puts_give_one_200_and_one_409(self, api: Api) -> None:
        pipeline = await api.create_pipeline()
        created = await api.create_feature(pipeline["id"])
        bodies = [
            {
                **feature_payload(pipeline["id"], name=created["name"], description=f"tab {i}"),
                "revision": 1,
            }
            for i in range(2)
        ]
        responses = await asyncio.gather(
            *(api.request("PUT", f"/features/{created['id']}", json=b) for b in bodies)
        )
        assert sorted(r.status_code for r in responses) == [200, 409]

    async def test_delete_removes_once(self, api: Api) -> None:
        pipeline = await api.create_pipeline()
        created = await api.create_feature(pipeline["id"])
        assert (await api.request("DELETE", f"/features/{created['id']}")).status_code == 204
        again = await api.request("DELETE", f"/features/{created['id']}")
        assert again.status_code == 404
        assert again.json()["error"] == "FeatureNotFound"

    async def test_list_filters_and_pages_stably(self, api: Api) -> None:
        p1, p2 = await api.create_pipeline(), await api.create_pipeline()
        ids = [
            (await api.create_feature(p["id"], enabled=i != 1))["id"]
            for i, p in enumerate([p1, p1, p2, p1])
        ]
        page1 = await api.request("GET", "/features", params={"limit": 2})
        page2 = await api.request("GET", "/features", params={"limit": 2, "offset": 2})
        assert [f["id"] for f in page1.json()["items"] + page2.json()["items"]] == ids
        assert page1.json()["total"] == 4
        of_p1 = await api.request("GET", "/features", params={"pipeline_id": p1["id"]})
        assert [f["id"] for f in of_p1.json()["items"]] == [ids[0], ids[1], ids[3]]
        disabled = await api.request("GET", "/features", params={"enabled": "false"})
        assert [f["id"] for f in disabled.json()["items"]] == [ids[1]]

    async def test_list_refuses_a_malformed_pipeline_filter(self, api: Api) -> None:
        response = await api.request("GET", "/features", params={"pipeline_id": '{"$gt": ""}'})
        assert response.status_code == 422
        assert response.json()["error"] == "ValidationError"


class TestNames:
    @pytest.mark.parametrize("name", ["Cart", "1cart", "cart-adds", "cart adds", "a" * 64, ""])
    async def test_name_must_be_an_identifier(self, api: Api, name: str) -> None:
        pipeline = await api.create_pipeline()
        status, body = await _post(api, feature_payload(pipeline["id"], name=name))
        assert status == 422
        assert body["fields"][0]["loc"] == ["body", "name"]

    async def test_longest_identifier_is_accepted(self, api: Api) -> None:
        pipeline = await api.create_pipeline()
        status, _ = await _post(api, feature_payload(pipeline["id"], name="a" * 63))
        assert status == 201

    async def test_name_is_unique_per_project(self, api: Api) -> None:
        pipeline = await api.create_pipeline()
        await api.create_feature(pipeline["id"], name="cart_adds")
        status, body = await _post(api, feature_payload(pipeline["id"], name="cart_adds"))
        assert (status, body["error"]) == (409, "FeatureNameTaken")

    async def test_renaming_onto_a_taken_name_is_a_conflict(self, api: Api) -> None:
        pipeline = await api.create_pipeline()
        await api.create_feature(pipeline["id"], name="taken")
        created = await api.create_feature(pipeline["id"])
        body = {**feature_payload(pipeline["id"], name="taken"), "revision": 1}
        response = await api.request("PUT", f"/features/{created['id']}", json=body)
        assert response.status_code == 409
        assert response.json()["error"] == "FeatureNameTaken"


class TestSourceAndField:
    async def test_count_takes_no_field(self, api: Api) -> None:
        pipeline = await api.create_pipeline()
        status, body = await _post(
            api, feature_payload(pipeline["id"], aggregation="COUNT", field="price")
        )
        assert (status, body["error"], body["fields"][0]["loc"]) == (
            422,
            "ValidationFailed",
            ["body", "field"],
        )
        assert "COUNT" in body["detail"]
        status, _ = await _post(api, feature_payload(pipeline["id"], aggregation="COUNT"))
        assert status == 201

    @pytest.mark.parametrize(
        "aggregation", ["SUM", "AVG", "MIN", "MAX", "COUNT_DISTINCT", "LAST", "FIRST"]
    )
    async def test_every_other_aggregation_needs_a_field(self, api: Api, aggregation: str) -> None:
        pipeline = await api.create_pipeline()
        status, body = await _post(api, feature_payload(pipeline["id"], aggregation=aggregation))
        assert (status, body["fields"][0]["type"]) == (422, "field_required")
        status, _ = await _post(
            api, feature_payload(pipeline["id"], aggregation=aggregation, field="price")
        )
        assert status == 201

    async def test_field_must_exist_on_the_source_event(self, api: Api) -> None:
        pipeline = await api.create_pipeline()
        status, body = await _post(
            api, feature_payload(pipeline["id"], aggregation="SUM", field="revenue")
        )
        assert (status, body["fields"][0]["type"]) == (422, "field_missing")

    @pytest.mark.parametrize("aggregation", ["SUM", "AVG", "MIN", "MAX"])
    async def test_numeric_aggregations_need_a_number_field(
        self, api: Api, aggregation: str
    ) -> None:
        pipeline = await api.create_pipeline()
        status, body = await _post(
            api, feature_payload(pipeline["id"], aggregation=aggregation, field="currency")
        )
        assert (status, body["fields"][0]["type"]) == (422, "field_not_numeric")

    @pytest.mark.parametrize("aggregation", ["COUNT_DISTINCT", "LAST", "FIRST"])
    async def test_other_aggregations_take_any_field_type(self, api: Api, aggregation: str) -> None:
        pipeline = await api.create_pipeline()
        status, _ = await _post(
            api, feature_payload(pipeline["id"], aggregation=aggregation, field="currency")
        )
        assert status == 201

    async def test_source_event_must_exist_in_the_pipeline(self, api: Api) -> None:
        pipeline = await api.create_pipeline()
        status, body = await _post(api, feature_payload(pipeline["id"], source_event="search"))
        assert (status, body["fields"][0]["loc"]) == (422, ["body", "source_event"])
        status, _ = await _post(api, feature_payload(pipeline["id"], source_event="purchase"))
        assert status == 201

    async def test_pipeline_must_exist_in_this_project(self, api: Api) -> None:
        other = "other_" + api.project
        foreign = await api.client.post(
            api.url("/pipelines", other),
            json={"name": "theirs", "category": "behavioral", "events": [event_payload()]},
            headers=api.bearer([other]),
        )
        assert foreign.status_code == 201
        for pipeline_id in (foreign.json()["id"], "0" * 24):
            status, body = await _post(api, feature_payload(pipeline_id))
            assert (status, body["fields"][0]["loc"]) == (422, ["body", "pipeline_id"])

    async def test_pipeline_id_must_be_an_object_id(self, api: Api) -> None:
        for bad in ("$where", "../x", "0" * 25):
            status, body = await _post(api, feature_payload(bad))
            assert (status, body["error"]) == (422, "ValidationError")

    async def test_a_field_of_another_event_does_not_count(self, api: Api) -> None:
        events = [
            event_payload("purchase", fields=[field_payload("revenue", "number")]),
            event_payload("search", fields=[field_payload("query")]),
        ]
        pipeline = await api.create_pipeline(events=events)
        payload = feature_payload(
            pipeline["id"], source_event="search", aggregation="SUM", field="revenue"
        )
        status, body = await _post(api, payload)
        assert (status, body["fields"][0]["type"]) == (422, "field_missing")


class TestWindows:
    async def test_windows_are_deduplicated_and_sorted_by_duration(self, api: Api) -> None:
        pipeline = await api.create_pipeline()
        windows = ["30d", "24h", "5m", "05m", "1h", "7d", "90m"]
        created = await api.create_feature(pipeline["id"], time_windows=windows)
        assert created["time_windows"] == ["5m", "1h", "90m", "24h", "7d", "30d"]

    async def test_the_bounds_1m_and_90d_are_accepted(self, api: Api) -> None:
        pipeline = await api.create_pipeline()
        created = await api.create_feature(pipeline["id"], time_windows=["90d", "1m", "2160h"])
        assert created["time_windows"] == ["1m", "2160h", "90d"]

    @pytest.mark.parametrize(
        "window", ["0m", "91d", "2161h", "30s", "1w", "5 m", "-5m", "5M", "m", "1.5h"]
    )
    async def test_invalid_window_is_refused(self, api: Api, window: str) -> None:
        pipeline = await api.create_pipeline()
        status, body = await _post(
            api, feature_payload(pipeline["id"], time_windows=["5m", window])
        )
        assert status == 422
        assert body["fields"][0]["loc"] == ["body", "time_windows", 1]

    async def test_window_list_is_bounded(self, api: Api) -> None:
        pipeline = await api.create_pipeline()
        for windows in ([], [f"{i}m" for i in range(1, 12)], ["5" * 20 + "m"]):
            status, body = await _post(api, feature_payload(pipeline["id"], time_windows=windows))
            assert (status, body["error"]) == (422, "ValidationError"), windows
        status, _ = await _post(
            api, feature_payload(pipeline["id"], time_windows=[f"{i}m" for i in range(1, 11)])
        )
        assert status == 201
