"""Events nested in a pipeline: add, replace/rename, delete, and what features allow."""

from __future__ import annotations

from tests.api.conftest import Api
from tests.factories import event_payload, field_payload


class TestAddEvent:
    async def test_added_event_is_appended_with_a_new_revision(self, api: Api) -> None:
        created = await api.create_pipeline()
        response = await api.request(
            "POST", f"/pipelines/{created['id']}/events", json=event_payload("search")
        )
        assert response.status_code == 201
        body = response.json()
        assert [e["name"] for e in body["events"]] == ["add_to_cart", "purchase", "search"]
        assert body["revision"] == 2

    async def test_first_event_moves_a_configuring_pipeline_to_inactive(self, api: Api) -> None:
        created = await api.create_pipeline(events=[])
        response = await api.request(
            "POST", f"/pipelines/{created['id']}/events", json=event_payload("search")
        )
        assert response.json()["status"] == "inactive"

    async def test_an_event_name_is_unique_in_its_pipeline(self, api: Api) -> None:
        created = await api.create_pipeline()
        response = await api.request(
            "POST", f"/pipelines/{created['id']}/events", json=event_payload("purchase")
        )
        assert response.status_code == 409
        assert response.json()["error"] == "EventNameTaken"

    async def test_event_names_must_be_identifiers(self, api: Api) -> None:
        created = await api.create_pipeline()
        for bad in ("AddToCart", "1st", "add-to-cart", "", "a" * 64):
            response = await api.request(
                "POST", f"/pipelines/{created['id']}/events", json=event_payload(bad)
            )
            assert response.status_code == 422, bad
            assert response.json()["fields"][0]["loc"] == ["body", "name"]
        ok = await api.request(
            "POST", f"/pipelines/{created['id']}/events", json=event_payload("a" * 63)
        )
        assert ok.status_code == 201

    async def test_field_names_follow_property_rules(self, api: Api) -> None:
        created = await api.create_pipeline()
        bad = event_payload("search", fields=[field_payload("$where")])
        response = await api.request("POST", f"/pipelines/{created['id']}/events", json=bad)
        assert response.status_code == 422
        good = event_payload("search", fields=[field_payload("productId")])
        response = await api.request("POST", f"/pipelines/{created['id']}/events", json=good)
        assert response.status_code == 201

    async def test_an_event_holds_at_most_100_fields(self, api: Api) -> None:
        created = await api.create_pipeline()
        fields = [field_payload(f"f{i}") for i in range(101)]
        response = await api.request(
            "POST", f"/pipelines/{created['id']}/events", json=event_payload("big", fields=fields)
        )
        assert response.status_code == 422
        response = await api.request(
            "POST",
            f"/pipelines/{created['id']}/events",
            json=event_payload("big", fields=fields[:100]),
        )
        assert response.status_code == 201


class TestReplaceEvent:
    async def test_replace_changes_fields_in_place(self, api: Api) -> None:
        created = await api.create_pipeline()
        fields = [field_payload("order_id", "string", required=True)]
        response = await api.request(
            "PUT",
            f"/pipelines/{created['id']}/events/add_to_cart",
            json=event_payload("add_to_cart", fields=fields, enabled=False),
        )
        assert response.status_code == 200
        first = response.json()["events"][0]
        assert (first["name"], first["enabled"], first["fields"][0]["name"]) == (
            "add_to_cart",
            False,
            "order_id",
        )

    async def test_rename_moves_the_features_along(self, api: Api) -> None:
        created = await api.create_pipeline()
        feature = await api.create_feature(created["id"], source_event="add_to_cart")
        other = await api.create_feature(created["id"], source_event="purchase")
        response = await api.request(
            "PUT",
            f"/pipelines/{created['id']}/events/add_to_cart",
            json=event_payload("cart_add"),
        )
        assert response.status_code == 200
        assert [e["name"] for e in response.json()["events"]] == ["cart_add", "purchase"]
        moved = (await api.request("GET", f"/features/{feature['id']}")).json()
        assert (moved["source_event"], moved["revision"]) == ("cart_add", 2)
        untouched = (await api.request("GET", f"/features/{other['id']}")).json()
        assert (untouched["source_event"], untouched["revision"]) == ("purchase", 1)

    async def test_rename_onto_another_event_is_a_conflict(self, api: Api) -> None:
        created = await api.create_pipeline()
        response = await api.request(
            "PUT",
            f"/pipelines/{created['id']}/events/add_to_cart",
            json=event_payload("purchase"),
        )
        assert response.status_code == 409
        assert response.json()["error"] == "EventNameTaken"

    async def test_retyping_an_aggregated_field_is_refused(self, api: Api) -> None:
        created = await api.create_pipeline()
        await api.create_feature(created["id"], aggregation="AVG", field="price")
        fields = [field_payload("price", "string"), field_payload("quantity", "number")]
        url = f"/pipelines/{created['id']}/events/add_to_cart"
        response = await api.request("PUT", url, json=event_payload("add_to_cart", fields=fields))
        assert response.status_code == 409
        assert response.json()["error"] == "FieldInUse"
        # Retyping a field no feature aggregates is fine.
        fields = [field_payload("price", "number"), field_payload("quantity", "string")]
        response = await api.request("PUT", url, json=event_payload("add_to_cart", fields=fields))
        assert response.status_code == 200

    async def test_removing_an_aggregated_field_is_refused(self, api: Api) -> None:
        created = await api.create_pipeline()
        await api.create_feature(created["id"], aggregation="LAST", field="currency")
        fields = [field_payload("price", "number")]
        url = f"/pipelines/{created['id']}/events/add_to_cart"
        response = await api.request("PUT", url, json=event_payload("add_to_cart", fields=fields))
        assert response.status_code == 409
        assert response.json()["error"] == "FieldInUse"

    async def test_unknown_event_is_not_found(self, api: Api) -> None:
        created = await api.create_pipeline()
        for name in ("search", "$where", "a.b", "%7B%22%24gt%22%3A%22%22%7D"):
            response = await api.request(
                "PUT", f"/pipelines/{created['id']}/events/{name}", json=event_payload("search")
            )
            assert response.status_code == 404, name
            assert response.json()["error"] == "EventNotFound"
        # An encoded slash leaves the route: still a 404 in the envelope.
        response = await api.request(
            "PUT", f"/pipelines/{created['id']}/events/..%2Fx", json=event_payload("search")
        )
        assert (response.status_code, response.json()["error"]) == (404, "NotFound")


class TestDeleteEvent:
    async def test_delete_removes_the_event(self, api: Api) -> None:
        created = await api.create_pipeline()
        response = await api.request("DELETE", f"/pipelines/{created['id']}/events/purchase")
        assert response.status_code == 204
        stored = (await api.request("GET", f"/pipelines/{created['id']}")).json()
        assert [e["name"] for e in stored["events"]] == ["add_to_cart"]
        assert stored["revision"] == 2

    async def test_delete_is_refused_while_a_feature_uses_the_event(self, api: Api) -> None:
        created = await api.create_pipeline()
        await api.create_feature(created["id"], name="cart_adds", source_event="add_to_cart")
        response = await api.request("DELETE", f"/pipelines/{created['id']}/events/add_to_cart")
        assert response.status_code == 409
        assert response.json()["error"] == "EventInUse"
        assert "cart_adds" in response.json()["detail"]

    async def test_deleting_the_last_event_makes_the_pipeline_configuring(self, api: Api) -> None:
        created = await api.create_pipeline(events=[event_payload("search")])
        await api.request("POST", f"/pipelines/{created['id']}/activate")
        await api.request("DELETE", f"/pipelines/{created['id']}/events/search")
        stored = (await api.request("GET", f"/pipelines/{created['id']}")).json()
        assert (stored["status"], stored["events"]) == ("configuring", [])

    async def test_deleting_an_unknown_event_is_not_found(self, api: Api) -> None:
        created = await api.create_pipeline()
        response = await api.request("DELETE", f"/pipelines/{created['id']}/events/search")
        assert response.status_code == 404
        assert response.json()["error"] == "EventNotFound"
