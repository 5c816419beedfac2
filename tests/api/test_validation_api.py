"""Input hygiene on every body and path: unknown fields, malformed JSON, bounds, and
hostile ids, all answered in the one error envelope."""

from __future__ import annotations

from typing import Any

import pytest

from tests.api.conftest import Api
from tests.api.test_isolation_api import WITH_IDS, Endpoint
from tests.factories import event_payload, feature_payload, pipeline_payload

HOSTILE_IDS = [
    "$where",
    '{"$gt": ""}',
    "%7B%22%24gt%22%3A%22%22%7D",
    "...",
    "0123456789abcdef01234567f",
    "0123456789ABCDEF01234567",
    "x" * 64,
]


def _envelope_ok(body: dict[str, Any]) -> None:
    assert set(body) <= {"error", "detail", "fields"}
    assert isinstance(body["error"], str)
    assert isinstance(body["detail"], str)


class TestBodies:
    @pytest.mark.parametrize(
        ("path", "payload"),
        [
            ("/pipelines", {**pipeline_payload(), "owner": "eve"}),
            ("/pipelines", pipeline_payload(events=[{**event_payload(), "$where": "1"}])),
            ("/features", {**feature_payload("0" * 24), "ttl": 5}),
        ],
        ids=["pipeline", "nested event", "feature"],
    )
    async def test_unknown_fields_are_refused(
        self, api: Api, path: str, payload: dict[str, Any]
    ) -> None:
        response = await api.client.post(api.url(path), json=payload)
        assert response.status_code == 422
        body = response.json()
        _envelope_ok(body)
        assert body["error"] == "ValidationError"
        assert body["fields"][0]["type"] == "extra_forbidden"

    @pytest.mark.parametrize("raw", [b"{", b'{"name": }', b"\xff\xfe", b"[1,"])
    async def test_malformed_json_is_refused_as_such(self, api: Api, raw: bytes) -> None:
        response = await api.client.post(
            api.url("/pipelines"), content=raw, headers={"content-type": "application/json"}
        )
        assert response.status_code == 422
        assert response.json()["error"] == "MalformedJSON"

    async def test_a_body_that_is_not_an_object_is_refused(self, api: Api) -> None:
        response = await api.client.post(api.url("/pipelines"), json=["name"])
        assert response.status_code == 422
        assert response.json()["error"] == "ValidationError"

    @pytest.mark.parametrize(
        ("override", "ok"),
        [
            ({"name": "x" * 101}, {"name": "x" * 100}),
            ({"name": "   "}, {"name": " Shop "}),
            ({"description": "d" * 1001}, {"description": "d" * 1000}),
            (
                {"events": [event_payload(f"e{i}") for i in range(101)]},
                {"events": [event_payload(f"e{i}") for i in range(100)]},
            ),
            (
                {"events": [event_payload(description="d" * 1001)]},
                {"events": [event_payload(description="d" * 1000)]},
            ),
            ({"template": "x" * 64}, {"template": "trust"}),
        ],
        ids=["name", "blank name", "description", "events", "event description", "template"],
    )
    async def test_strings_and_lists_are_bounded(
        self, api: Api, override: dict[str, Any], ok: dict[str, Any]
    ) -> None:
        response = await api.client.post(api.url("/pipelines"), json=pipeline_payload(**override))
        assert response.status_code == 422
        assert response.json()["error"] == "ValidationError"
        response = await api.client.post(api.url("/pipelines"), json=pipeline_payload(**ok))
        assert response.status_code == 201, response.text

    async def test_names_are_stripped(self, api: Api) -> None:
        created = await api.create_pipeline(name="  Shop  ")
        assert created["name"] == "Shop"


class TestHostileIds:
    @pytest.mark.parametrize("endpoint", WITH_IDS, ids=str)
    async def test_hostile_ids_are_not_found(self, api: Api, endpoint: Endpoint) -> None:
        pipeline = await api.create_pipeline()
        feature = await api.create_feature(pipeline["id"])
        body: dict[str, Any] | None = {
            None: None,
            "pipeline_update": {"name": "x", "category": "behavioral", "events": [], "revision": 1},
            "event": event_payload(),
            "feature_update": {**feature_payload(pipeline["id"]), "revision": 1},
        }[endpoint.body]
        for bad in HOSTILE_IDS:
            path = endpoint.path.format(pid=bad, fid=bad)
            response = await api.client.request(endpoint.method, api.url(path), json=body)
            assert response.status_code == 404, (bad, response.text)
            _envelope_ok(response.json())
            assert response.json()["error"] == endpoint.not_found, bad
        # Nothing was touched.
        assert (await api.request("GET", f"/pipelines/{pipeline['id']}")).json()["revision"] == 1
        assert (await api.request("GET", f"/features/{feature['id']}")).json()["revision"] == 1

    async def test_an_overlong_id_is_refused_before_any_lookup(self, api: Api) -> None:
        response = await api.request("GET", "/pipelines/" + "a" * 65)
        assert response.status_code == 422
        assert response.json()["fields"][0]["loc"] == ["path", "pipeline_id"]

    async def test_a_hostile_project_id_is_not_found(self, api: Api) -> None:
        for bad in ("$where", "a" * 65, "-x"):
            response = await api.client.get(api.url("/pipelines", bad), headers=api.bearer([bad]))
            assert response.status_code == 404, bad
            assert response.json()["error"] == "ProjectNotFound"
