"""Deployments over HTTP: the real config API on both config stores and the real Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr
from pymongo import AsyncMongoClient

from app.core.auth import issue_token
from app.core.config_loader import ConfigLoader, config_key
from app.core.settings import AuthSettings, BackendSettings, ConfigApiSettings
from app.schemas.deployment import ConfigSnapshot
from main import create_app
from tests.conftest import unique
from tests.core.own_redis import OwnRedis
from tests.factories import feature_payload, pipeline_payload

pytestmark = pytest.mark.redis

JWT_SECRET = "deployments-api-" + "k" * 40


@dataclass
class Client:
    app: FastAPI
    http: httpx.AsyncClient
    project: str
    auth: AuthSettings

    def url(self, path: str, project: str | None = None) -> str:
        return f"/api/v1/projects/{project or self.project}{path}"

    def bearer(self, sub: str, projects: list[str]) -> dict[str, str]:
        return {"Authorization": f"Bearer {issue_token(self.auth, sub, projects)}"}

    async def call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        return await self.http.request(method, self.url(path), **kw)

    async def ok(self, method: str, path: str, code: int = 200, **kw: Any) -> Any:
        response = await self.call(method, path, **kw)
        assert response.status_code == code, response.text
        return response.json() if response.content else None

    async def active_pipeline(self) -> dict[str, Any]:
        pipeline = await self.ok("POST", "/pipelines", 201, json=pipeline_payload())
        return await self.ok("POST", f"/pipelines/{pipeline['id']}/activate")

    async def feature(self, pipeline_id: str, **overrides: Any) -> dict[str, Any]:
        body = feature_payload(pipeline_id, **overrides)
        return await self.ok("POST", "/features", 201, json=body)


async def _drop_database(settings: BackendSettings) -> None:
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(
        settings.mongodb_url, serverSelectionTimeoutMS=5000
    )
    try:
        await client.drop_database(settings.mongodb_database)
    finally:
        await client.close()


async def _client(backends: BackendSettings) -> AsyncIterator[Client]:
    auth = AuthSettings(secret=SecretStr(JWT_SECRET))
    settings = ConfigApiSettings(environment="development", backends=backends, auth=auth)
    app = create_app(settings)
    project = unique("shop")
    headers = {"Authorization": f"Bearer {issue_token(auth, 'alice', [project])}"}
    try:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://api.test", headers=headers
            ) as http:
                yield Client(app=app, http=http, project=project, auth=auth)
    finally:
        if backends.config_store == "mongodb":
            await _drop_database(backends)


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("mongodb", id="mongodb", marks=pytest.mark.mongodb),
    ]
)
async def api(
    request: pytest.FixtureRequest, backend_settings: BackendSettings
) -> AsyncIterator[Client]:
    backends = backend_settings.model_copy(update={"config_store": request.param, "cache": "redis"})
    async for client in _client(backends):
        yield client


class TestDeployFlow:
    async def test_deploy_edit_deploy_rollback_deploy_again(self, api: Client):
        assert await api.ok("GET", "/deployments/pending") == {"base_version": None, "changes": []}
        pipeline = await api.active_pipeline()
        feature = await api.feature(pipeline["id"], time_windows=["1h", "24h"])

        pending = await api.ok("GET", "/deployments/pending")
        assert pending["base_version"] is None
        assert {(c["type"], c["resource_type"]) for c in pending["changes"]} == {
            ("create", "pipeline"),
            ("create", "event"),
            ("create", "feature"),
        }
        v1 = await api.ok("POST", "/deployments", 201, json={"description": "launch"})
        assert (v1["version"], v1["status"], v1["deployed_by"]) == (1, "success", "alice")
        assert v1["description"] == "launch"
        assert v1["changes"] == pending["changes"]

        again = await api.call("POST", "/deployments")
        assert again.status_code == 409
        assert again.json()["error"] == "NothingToDeploy"

        body = {k: feature[k] for k in ("name", "description", "pipeline_id", "source_event")}
        body |= {"aggregation": "COUNT", "time_windows": ["5m", "1h", "24h"], "enabled": True}
        body["revision"] = feature["revision"]
        await api.ok("PUT", f"/features/{feature['id']}", json=body)
        pending = await api.ok("GET", "/deployments/pending")
        assert pending["base_version"] == 1
        assert [c["description"] for c in pending["changes"]] == [
            f"feature {feature['name']}: windows 1h,24h → 5m,1h,24h"
        ]
        other_user = api.bearer("bob", [api.project])
        v2 = await api.ok("POST", "/deployments", 201, headers=other_user)
        assert (v2["version"], v2["deployed_by"]) == (2, "bob")

        v3 = await api.ok("POST", f"/deployments/{v1['id']}/rollback", 201)
        assert (v3["version"], v3["status"], v3["rolled_back_from"]) == (3, "success", 1)
        restored = await api.ok("GET", f"/features/{feature['id']}")
        assert restored["time_windows"] == ["1h", "24h"]
        assert (await api.ok("GET", "/deployments/pending"))["changes"] == []

        history = await api.ok("GET", "/deployments")
        assert [(d["version"], d["status"]) for d in history["items"]] == [
            (3, "success"),
            (2, "rolled_back"),
            (1, "success"),
        ]
        assert "snapshot" not in history["items"][0]
        page = await api.ok("GET", "/deployments", params={"limit": 1, "offset": 1})
        assert (page["total"], page["limit"], page["offset"]) == (3, 1, 1)
        assert [d["version"] for d in page["items"]] == [2]
        assert (await api.ok("GET", f"/deployments/{v2['id']}"))["status"] == "rolled_back"

        await api.ok("POST", f"/pipelines/{pipeline['id']}/deactivate")
        body |= {"enabled": False, "revision": restored["revision"], "time_windows": ["1h", "24h"]}
        await api.ok("PUT", f"/features/{feature['id']}", json=body)
        v4 = await api.ok("POST", "/deployments", 201)
        assert v4["version"] == 4
        descriptions = sorted(c["description"] for c in v4["changes"])
        assert descriptions == sorted(
            [
                f"pipeline {pipeline['name']}: status active → inactive",
                f"feature {feature['name']}: disabled",
            ]
        )

        raw = await api.app.state.resources.cache.get(config_key(api.project))
        assert ConfigSnapshot.model_validate_json(raw).version == 4

    async def test_an_invalid_draft_answers_422_with_every_problem(self, api: Client):
        # The feature API checks each feature as it is saved; what only the whole-config
        # check catches is a feature whose pipeline is not active or whose event is off.
        pipeline = await api.ok("POST", "/pipelines", 201, json=pipeline_payload())  # inactive
        feature = await api.feature(pipeline["id"])
        event = dict(pipeline["events"][0]) | {"enabled": False}
        await api.ok("PUT", f"/pipelines/{pipeline['id']}/events/{event['name']}", json=event)
        response = await api.call("POST", "/deployments")
        assert response.status_code == 422
        body = response.json()
        assert body["error"] == "InvalidConfig"
        assert {(tuple(f["loc"]), f["type"]) for f in body["fields"]} == {
            (("features", feature["id"], "pipeline_id"), "pipeline_inactive"),
            (("features", feature["id"], "source_event"), "event_disabled"),
        }
        assert (await api.ok("GET", "/deployments"))["total"] == 0

    async def test_two_concurrent_deploys_give_one_201_and_one_409(self, api: Client):
        await api.active_pipeline()
        first, second = await asyncio.gather(
            api.call("POST", "/deployments"), api.call("POST", "/deployments")
        )
        assert sorted([first.status_code, second.status_code]) == [201, 409]
        loser = first if first.status_code == 409 else second
        assert loser.json()["error"] in {"DeploymentConflict", "NothingToDeploy"}
        assert (await api.ok("GET", "/deployments"))["total"] == 1


class TestRollbackErrors:
    async def test_unknown_and_malformed_ids_are_404(self, api: Client):
        for deployment_id in ("0" * 24, "not-an-id"):
            response = await api.call("POST", f"/deployments/{deployment_id}/rollback")
            assert response.status_code == 404
            assert response.json()["error"] == "DeploymentNotFound"
            assert (await api.call("GET", f"/deployments/{deployment_id}")).status_code == 404

    async def test_rolling_back_to_the_live_version_is_409(self, api: Client):
        await api.active_pipeline()
        v1 = await api.ok("POST", "/deployments", 201)
        response = await api.call("POST", f"/deployments/{v1['id']}/rollback")
        assert response.status_code == 409
        assert response.json()["error"] == "AlreadyLive"


class TestAccess:
    async def test_another_projects_deployments_are_not_found(self, api: Client):
        await api.active_pipeline()
        v1 = await api.ok("POST", "/deployments", 201)
        stranger = api.bearer("mallory", ["elsewhere"])
        for method, path in (
            ("GET", "/deployments"),
            ("GET", "/deployments/pending"),
            ("POST", "/deployments"),
            ("POST", f"/deployments/{v1['id']}/rollback"),
        ):
            response = await api.call(method, path, headers=stranger)
            assert response.status_code == 404, (method, path)
            assert response.json()["error"] == "ProjectNotFound"
        # The id exists, but in another project: the same 404 as an unknown id.
        theirs = api.url(f"/deployments/{v1['id']}", project="elsewhere")
        response = await api.http.get(theirs, headers=stranger)
        assert response.json()["error"] == "DeploymentNotFound"

    async def test_a_token_is_required(self, api: Client):
        response = await api.http.post(api.url("/deployments"), headers={"Authorization": ""})
        assert response.status_code == 401

    async def test_openapi_documents_the_routes_and_their_errors(self, api: Client):
        spec = (await api.http.get("/openapi.json")).json()
        deploy = spec["paths"]["/api/v1/projects/{project_id}/deployments"]["post"]
        assert {"201", "409", "422", "503"} <= set(deploy["responses"])
        rollback = spec["paths"][
            "/api/v1/projects/{project_id}/deployments/{deployment_id}/rollback"
        ]["post"]
        assert {"201", "404", "409", "503"} <= set(rollback["responses"])
        assert "/api/v1/projects/{project_id}/deployments/pending" in spec["paths"]


class TestRedisDown:
    async def test_a_deploy_with_redis_down_answers_503_and_keeps_the_previous_version(
        self, backend_settings: BackendSettings, tmp_path: Path
    ):
        server = OwnRedis(tmp_path)
        server.start()
        try:
            backends = backend_settings.model_copy(
                update={"config_store": "sqlite", "cache": "redis", "redis_url": server.url}
            )
            async for api in _client(backends):
                pipeline = await api.active_pipeline()
                await api.ok("POST", "/deployments", 201)
                await api.feature(pipeline["id"])
                server.kill()
                response = await api.call("POST", "/deployments")
                assert response.status_code == 503
                assert response.json()["error"] == "DeploymentFailed"
                history = await api.ok("GET", "/deployments")
                assert [(d["version"], d["status"]) for d in history["items"]] == [
                    (2, "failed"),
                    (1, "success"),
                ]
                assert history["items"][0]["error"]
                resources = api.app.state.resources
                live = await ConfigLoader(resources.cache, resources.config_store).get(api.project)
                assert live is not None
                assert live.version == 1
                assert (await api.ok("GET", "/deployments/pending"))["base_version"] == 1
        finally:
            server.kill()
