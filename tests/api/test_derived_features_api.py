"""Derived features through the config API: valid and refused definitions, the in-use
rule, the pending diff and the deploy validation."""

from __future__ import annotations

from typing import Any

from tests.api.conftest import Api
from tests.factories import unique_name


def derived_payload(pipeline_id: str, expression: str, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "kind": "derived",
        "name": unique_name("rate"),
        "pipeline_id": pipeline_id,
        "expression": expression,
    }
    body.update(overrides)
    return body


async def _inputs(api: Api) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """An active pipeline with `adds` (COUNT of add_to_cart, 1h and 24h) and `buys`
    (COUNT of purchase, 1h)."""
    pipeline = await api.create_active_pipeline()
    adds = await api.create_feature(pipeline["id"], name="adds", time_windows=["1h", "24h"])
    buys = await api.create_feature(
        pipeline["id"], name="buys", source_event="purchase", time_windows=["1h"]
    )
    return pipeline, adds, buys


class TestValidDefinitions:
    async def test_created_derived_feature_reads_back_as_written(self, api: Api) -> None:
        pipeline, _, _ = await _inputs(api)
        body = derived_payload(pipeline["id"], " (buys_1h)/ adds_1h ", name="conversion")
        created = await api.ok("POST", "/features", 201, json=body)
        assert created["kind"] == "derived"
        assert created["expression"] == "(buys_1h)/ adds_1h"
        assert "source_event" not in created
        assert "time_windows" not in created
        got = await api.ok("GET", f"/features/{created['id']}")
        assert got == created

    async def test_an_aggregate_without_kind_is_still_an_aggregate(self, api: Api) -> None:
        pipeline = await api.create_pipeline()
        created = await api.create_feature(pipeline["id"])
        assert created["kind"] == "aggregate"

    async def test_functions_and_numbers_are_accepted(self, api: Api) -> None:
        pipeline, _, _ = await _inputs(api)
        body = derived_payload(pipeline["id"], "coalesce(buys_1h / adds_1h, 0) * 100")
        await api.ok("POST", "/features", 201, json=body)


class TestRefusedDefinitions:
    async def test_a_syntax_error_is_a_422_naming_its_position(self, api: Api) -> None:
        pipeline, _, _ = await _inputs(api)
        response = await api.request(
            "POST", "/features", json=derived_payload(pipeline["id"], "buys_1h / ")
        )
        assert response.status_code == 422
        body = response.json()
        assert body["error"] == "ValidationFailed"
        assert body["fields"][0]["loc"] == ["body", "expression"]
        assert body["fields"][0]["type"] == "expression_syntax"
        assert "at position 10" in body["fields"][0]["msg"]

    async def test_an_unknown_key_is_a_422_naming_it_and_its_position(self, api: Api) -> None:
        pipeline, _, _ = await _inputs(api)
        payload = derived_payload(pipeline["id"], "buys_1h / adds_7d")
        response = await api.request("POST", "/features", json=payload)
        assert response.status_code == 422
        (problem,) = response.json()["fields"]
        assert problem["type"] == "reference_missing"
        assert "'adds_7d' at position 10" in problem["msg"]

    async def test_a_list_valued_key_is_refused(self, api: Api) -> None:
        pipeline = await api.create_pipeline()
        await api.create_feature(
            pipeline["id"], name="seen", aggregation="LAST_N", field="product_id", size=5
        )
        await api.create_feature(
            pipeline["id"], name="last_sku", aggregation="LAST", field="product_id"
        )
        await api.create_feature(
            pipeline["id"], name="last_price", aggregation="LAST", field="price"
        )
        payload = derived_payload(pipeline["id"], "seen_1h + last_sku_1h + last_price_1h")
        response = await api.request("POST", "/features", json=payload)
        assert response.status_code == 422
        problems = response.json()["fields"]
        assert [p["type"] for p in problems] == ["reference_not_number"] * 2
        assert "'seen_1h' at position 0" in problems[0]["msg"]
        assert "'last_sku_1h' at position 10" in problems[1]["msg"]

    async def test_a_derived_feature_cannot_read_another(self, api: Api) -> None:
        pipeline, _, _ = await _inputs(api)
        await api.ok(
            "POST", "/features", 201, json=derived_payload(pipeline["id"], "adds_1h", name="d1")
        )
        response = await api.request(
            "POST", "/features", json=derived_payload(pipeline["id"], "d1 * 2")
        )
        assert response.status_code == 422
        assert "derived feature" in response.json()["fields"][0]["msg"]

    async def test_aggregate_fields_on_a_derived_feature_are_refused(self, api: Api) -> None:
        pipeline, _, _ = await _inputs(api)
        payload = derived_payload(pipeline["id"], "adds_1h", time_windows=["1h"])
        response = await api.request("POST", "/features", json=payload)
        assert response.status_code == 422
        assert response.json()["fields"][0]["loc"][-1] == "time_windows"

    async def test_a_name_equal_to_a_served_key_is_a_409(self, api: Api) -> None:
        pipeline, _, _ = await _inputs(api)
        payload = derived_payload(pipeline["id"], "buys_1h", name="adds_1h")
        response = await api.request("POST", "/features", json=payload)
        assert response.status_code == 409
        assert response.json()["error"] == "ServedKeyConflict"


class TestInUse:
    async def test_deleting_a_feature_a_derived_one_reads_is_a_409(self, api: Api) -> None:
        pipeline, adds, _ = await _inputs(api)
        body = derived_payload(pipeline["id"], "buys_1h / adds_1h", name="conversion")
        derived = await api.ok("POST", "/features", 201, json=body)
        response = await api.request("DELETE", f"/features/{adds['id']}")
        assert response.status_code == 409
        assert response.json()["error"] == "FeatureInUse"
        assert "conversion (reads adds_1h)" in response.json()["detail"]
        await api.ok("DELETE", f"/features/{derived['id']}", 204)
        await api.ok("DELETE", f"/features/{adds['id']}", 204)

    async def test_renaming_or_dropping_a_read_window_is_a_409(self, api: Api) -> None:
        pipeline, adds, _ = await _inputs(api)
        body = derived_payload(pipeline["id"], "buys_1h / adds_1h")
        await api.ok("POST", "/features", 201, json=body)
        base = {k: adds[k] for k in ("name", "pipeline_id", "source_event", "aggregation")}
        renamed = {**base, "name": "adds2", "time_windows": ["1h"], "revision": 1}
        response = await api.request("PUT", f"/features/{adds['id']}", json=renamed)
        assert response.status_code == 409
        assert response.json()["error"] == "FeatureInUse"
        dropped = {**base, "time_windows": ["24h"], "revision": 1}
        response = await api.request("PUT", f"/features/{adds['id']}", json=dropped)
        assert response.status_code == 409
        kept = {**base, "time_windows": ["1h", "7d"], "revision": 1}
        await api.ok("PUT", f"/features/{adds['id']}", json=kept)


class TestDeploy:
    async def test_pending_diff_and_deploy_carry_the_derived_feature(self, api: Api) -> None:
        pipeline, _, _ = await _inputs(api)
        body = derived_payload(pipeline["id"], "buys_1h / adds_1h", name="conversion")
        created = await api.ok("POST", "/features", 201, json=body)
        pending = await api.ok("GET", "/deployments/pending")
        change = next(c for c in pending["changes"] if c["resource_id"] == created["id"])
        assert change["description"] == "feature conversion: created (derived buys_1h / adds_1h)"
        await api.ok("POST", "/deployments", 201)
        update = {**body, "expression": "buys_1h / (adds_1h + 1)", "revision": 1}
        await api.ok("PUT", f"/features/{created['id']}", json=update)
        pending = await api.ok("GET", "/deployments/pending")
        assert [c["description"] for c in pending["changes"]] == [
            "feature conversion: expression buys_1h / adds_1h → buys_1h / (adds_1h + 1)"
        ]

    async def test_deploy_refuses_a_derived_feature_reading_a_disabled_one(self, api: Api) -> None:
        pipeline, adds, _ = await _inputs(api)
        body = derived_payload(pipeline["id"], "buys_1h / adds_1h", name="conversion")
        created = await api.ok("POST", "/features", 201, json=body)
        disabled = {
            **{k: adds[k] for k in ("name", "pipeline_id", "source_event", "aggregation")},
            "time_windows": adds["time_windows"],
            "enabled": False,
            "revision": 1,
        }
        await api.ok("PUT", f"/features/{adds['id']}", json=disabled)
        response = await api.request("POST", "/deployments")
        assert response.status_code == 422
        problem = next(p for p in response.json()["fields"] if p["loc"][1] == created["id"])
        assert problem["loc"] == ["features", created["id"], "expression"]
        assert "'adds_1h' at position 10" in problem["msg"]
