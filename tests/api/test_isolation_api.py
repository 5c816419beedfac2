"""The access rule on every endpoint: a token only reaches its own projects, a foreign
project or a foreign resource is 404 (indistinguishable from absent), and a missing,
malformed, forged or expired token is 401."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jwt
import pytest

from tests.api.conftest import Api
from tests.factories import event_payload, feature_payload, pipeline_payload


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str  # {pid} and {fid} are filled in with real ids
    body: str | None = None  # which payload to send
    not_found: str | None = None  # error for a foreign id under the caller's own project

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


ENDPOINTS = [
    Endpoint("GET", "/pipelines"),
    Endpoint("POST", "/pipelines", body="pipeline"),
    Endpoint("GET", "/pipelines/{pid}", not_found="PipelineNotFound"),
    Endpoint("PUT", "/pipelines/{pid}", body="pipeline_update", not_found="PipelineNotFound"),
    Endpoint("DELETE", "/pipelines/{pid}", not_found="PipelineNotFound"),
    Endpoint("POST", "/pipelines/{pid}/activate", not_found="PipelineNotFound"),
    Endpoint("POST", "/pipelines/{pid}/deactivate", not_found="PipelineNotFound"),
    Endpoint("GET", "/pipelines/{pid}/webhook", not_found="PipelineNotFound"),
    Endpoint("POST", "/pipelines/{pid}/webhook/rotate", not_found="PipelineNotFound"),
    Endpoint("POST", "/pipelines/{pid}/events", body="event", not_found="PipelineNotFound"),
    Endpoint(
        "PUT", "/pipelines/{pid}/events/add_to_cart", body="event", not_found="PipelineNotFound"
    ),
    Endpoint("DELETE", "/pipelines/{pid}/events/purchase", not_found="PipelineNotFound"),
    Endpoint("GET", "/features"),
    Endpoint("POST", "/features", body="feature"),
    Endpoint("GET", "/features/{fid}", not_found="FeatureNotFound"),
    Endpoint("PUT", "/features/{fid}", body="feature_update", not_found="FeatureNotFound"),
    Endpoint("DELETE", "/features/{fid}", not_found="FeatureNotFound"),
]
WITH_IDS = [e for e in ENDPOINTS if e.not_found]


@dataclass
class Tenant:
    project: str
    pipeline: dict[str, Any]
    feature: dict[str, Any]
    headers: dict[str, str]


async def _tenant(api: Api, project: str) -> Tenant:
    headers = api.bearer([project])
    pipeline = await api.client.post(
        api.url("/pipelines", project), json=pipeline_payload(), headers=headers
    )
    assert pipeline.status_code == 201
    feature = await api.client.post(
        api.url("/features", project),
        json=feature_payload(pipeline.json()["id"], source_event="add_to_cart"),
        headers=headers,
    )
    assert feature.status_code == 201
    return Tenant(project, pipeline.json(), feature.json(), headers)


def _body(kind: str | None, tenant: Tenant) -> dict[str, Any] | None:
    pid = tenant.pipeline["id"]
    bodies: dict[str, dict[str, Any]] = {
        "pipeline": pipeline_payload(),
        "pipeline_update": {
            "name": "hijacked",
            "category": "behavioral",
            "events": [event_payload("add_to_cart")],
            "revision": 1,
        },
        "event": event_payload("add_to_cart", description="hijacked"),
        "feature": feature_payload(pid),
        "feature_update": {**feature_payload(pid, name=tenant.feature["name"]), "revision": 1},
    }
    return bodies[kind] if kind else None


def _path(endpoint: Endpoint, tenant: Tenant) -> str:
    return endpoint.path.format(pid=tenant.pipeline["id"], fid=tenant.feature["id"])


async def _assert_untouched(api: Api, victim: Tenant) -> None:
    pipeline = await api.client.get(
        api.url(f"/pipelines/{victim.pipeline['id']}", victim.project), headers=victim.headers
    )
    assert pipeline.status_code == 200
    assert pipeline.json()["revision"] == 1
    webhook = await api.client.get(
        api.url(f"/pipelines/{victim.pipeline['id']}/webhook", victim.project),
        headers=victim.headers,
    )
    assert webhook.json()["previous_secret"] is None
    feature = await api.client.get(
        api.url(f"/features/{victim.feature['id']}", victim.project), headers=victim.headers
    )
    assert feature.json()["revision"] == 1
    for listing in ("/pipelines", "/features"):
        page = await api.client.get(api.url(listing, victim.project), headers=victim.headers)
        assert page.json()["total"] == 1


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=str)
async def test_a_foreign_project_is_not_found(api: Api, endpoint: Endpoint) -> None:
    victim = await _tenant(api, "victim_" + api.project)
    response = await api.client.request(
        endpoint.method,
        api.url(_path(endpoint, victim), victim.project),
        json=_body(endpoint.body, victim),
    )
    assert response.status_code == 404
    assert response.json()["error"] == "ProjectNotFound"
    await _assert_untouched(api, victim)


@pytest.mark.parametrize("endpoint", WITH_IDS, ids=str)
async def test_a_foreign_id_under_ones_own_project_is_not_found(
    api: Api, endpoint: Endpoint
) -> None:
    victim = await _tenant(api, "victim_" + api.project)
    response = await api.client.request(
        endpoint.method, api.url(_path(endpoint, victim)), json=_body(endpoint.body, victim)
    )
    assert response.status_code == 404
    assert response.json()["error"] == endpoint.not_found
    await _assert_untouched(api, victim)


async def test_lists_show_only_the_callers_project(api: Api) -> None:
    victim = await _tenant(api, "victim_" + api.project)
    mine = await _tenant(api, api.project)
    pipelines = (await api.request("GET", "/pipelines")).json()
    features = (await api.request("GET", "/features")).json()
    assert [p["id"] for p in pipelines["items"]] == [mine.pipeline["id"]]
    assert [f["id"] for f in features["items"]] == [mine.feature["id"]]
    filtered = await api.request("GET", "/features", params={"pipeline_id": victim.pipeline["id"]})
    assert filtered.json()["items"] == []


async def test_a_token_for_several_projects_reaches_each(api: Api) -> None:
    other = "other_" + api.project
    headers = api.bearer([api.project, other])
    for project in (api.project, other):
        response = await api.client.get(api.url("/pipelines", project), headers=headers)
        assert response.status_code == 200


def _bad_headers(api: Api) -> dict[str, dict[str, str]]:
    forged = jwt.encode(
        {"sub": "x", "projects": [api.project], "exp": 4_000_000_000},
        "not-the-secret-" + "x" * 32,
        algorithm="HS256",
    )
    return {
        "missing": {},
        "malformed": {"Authorization": "Bearer not.a.jwt"},
        "not bearer": {"Authorization": f"Basic {api.token([api.project])}"},
        "forged": {"Authorization": f"Bearer {forged}"},
        "expired": api.bearer([api.project], ttl_seconds=-60),
    }


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=str)
async def test_a_missing_or_invalid_token_is_unauthorized(api: Api, endpoint: Endpoint) -> None:
    mine = await _tenant(api, api.project)
    for kind, headers in _bad_headers(api).items():
        # A bare client: the fixture's client would add the valid token.
        response = await api.client.request(
            endpoint.method,
            api.url(_path(endpoint, mine)),
            json=_body(endpoint.body, mine),
            headers={"Authorization": ""} | headers,
        )
        assert response.status_code == 401, kind
        assert response.json()["error"] == "Unauthorized", kind
        assert response.headers["www-authenticate"] == "Bearer"
    expired = await api.client.get(
        api.url("/pipelines"), headers=api.bearer([api.project], ttl_seconds=-60)
    )
    assert expired.json()["detail"] == "Token has expired"


@pytest.mark.parametrize("path", ["/api/v1/pipeline-templates", "/api/v1/pipeline-templates/trust"])
async def test_templates_need_a_valid_token(api: Api, path: str) -> None:
    for kind, headers in _bad_headers(api).items():
        response = await api.client.get(path, headers={"Authorization": ""} | headers)
        assert response.status_code == 401, kind
    assert (await api.client.get(path)).status_code == 200
