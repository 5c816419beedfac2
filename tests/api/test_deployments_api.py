"""Deployments over HTTP: the real config API on both config stores and the real Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from app.core.config_loader import ConfigLoader, config_key
from app.core.settings import BackendSettings
from app.schemas.deployment import ConfigSnapshot
from tests.api.conftest import Api, running_api
from tests.support.own_redis import OwnRedis

pytestmark = pytest.mark.redis


@pytest.fixture
async def api(config_backends: BackendSettings) -> AsyncIterator[Api]:
    """The config API on each config store, with the real Redis cache (deploys publish)."""
    async with running_api(config_backends.model_copy(update={"cache": "redis"})) as running:
        yield running


class TestDeployFlow:
    async def test_deploy_edit_deploy_rollback_deploy_again(self, api: Api):
        assert await api.ok("GET", "/deployments/pending") == {"base_version": None, "changes": []}
        pipeline = await api.create_active_pipeline()
        feature = await api.create_feature(pipeline["id"], time_windows=["1h", "24h"])

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

        again = await api.request("POST", "/deployments")
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
        other_user = api.bearer([api.project], subject="bob")
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

    async def test_rollback_says_it_reset_the_draft_and_lists_the_discarded_edits(self, api: Api):
        pipeline = await api.create_active_pipeline()
        v1 = await api.ok("POST", "/deployments", 201)
        await api.create_feature(pipeline["id"], name="kept")
        await api.ok("POST", "/deployments", 201)
        draft_only = await api.create_feature(pipeline["id"], name="undeployed")
        pending = await api.ok("GET", "/deployments/pending")

        rolled = await api.ok("POST", f"/deployments/{v1['id']}/rollback", 201)

        assert rolled["draft_reset"] is True
        assert rolled["discarded_changes"] == pending["changes"]
        assert [(c["type"], c["resource_id"]) for c in rolled["discarded_changes"]] == [
            ("create", draft_only["id"])
        ]
        assert (await api.ok("GET", "/features"))["items"] == []

    async def test_rollback_with_nothing_pending_discards_nothing(self, api: Api):
        pipeline = await api.create_active_pipeline()
        v1 = await api.ok("POST", "/deployments", 201)
        await api.create_feature(pipeline["id"])
        await api.ok("POST", "/deployments", 201)

        rolled = await api.ok("POST", f"/deployments/{v1['id']}/rollback", 201)

        assert (rolled["draft_reset"], rolled["discarded_changes"]) == (True, [])

    async def test_an_invalid_draft_answers_422_with_every_problem(self, api: Api):
        # The feature API checks each feature as it is saved; what only the whole-config
        # check catches is a feature whose pipeline is not active or whose event is off.
        pipeline = await api.create_pipeline()  # inactive
        feature = await api.create_feature(pipeline["id"])
        event = dict(pipeline["events"][0]) | {"enabled": False}
        await api.ok("PUT", f"/pipelines/{pipeline['id']}/events/{event['name']}", json=event)
        response = await api.request("POST", "/deployments")
        assert response.status_code == 422
        body = response.json()
        assert body["error"] == "InvalidConfig"
        assert {(tuple(f["loc"]), f["type"]) for f in body["fields"]} == {
            (("features", feature["id"], "pipeline_id"), "pipeline_inactive"),
            (("features", feature["id"], "source_event"), "event_disabled"),
        }
        assert (await api.ok("GET", "/deployments"))["total"] == 0

    async def test_two_concurrent_deploys_give_one_201_and_one_409(self, api: Api):
        await api.create_active_pipeline()
        first, second = await asyncio.gather(
            api.request("POST", "/deployments"), api.request("POST", "/deployments")
        )
        assert sorted([first.status_code, second.status_code]) == [201, 409]
        loser = first if first.status_code == 409 else second
        assert loser.json()["error"] in {"DeploymentConflict", "NothingToDeploy"}
        assert (await api.ok("GET", "/deployments"))["total"] == 1


class TestRollbackErrors:
    async def test_unknown_and_malformed_ids_are_404(self, api: Api):
        for deployment_id in ("0" * 24, "not-an-id"):
            response = await api.request("POST", f"/deployments/{deployment_id}/rollback")
            assert response.status_code == 404
            assert response.json()["error"] == "DeploymentNotFound"
            assert (await api.request("GET", f"/deployments/{deployment_id}")).status_code == 404

    async def test_rolling_back_to_the_live_version_is_409(self, api: Api):
        await api.create_active_pipeline()
        v1 = await api.ok("POST", "/deployments", 201)
        response = await api.request("POST", f"/deployments/{v1['id']}/rollback")
        assert response.status_code == 409
        assert response.json()["error"] == "AlreadyLive"


class TestAccess:
    async def test_another_projects_deployments_are_not_found(self, api: Api):
        await api.create_active_pipeline()
        v1 = await api.ok("POST", "/deployments", 201)
        stranger = api.bearer(["elsewhere"], subject="mallory")
        for method, path in (
            ("GET", "/deployments"),
            ("GET", "/deployments/pending"),
            ("POST", "/deployments"),
            ("POST", f"/deployments/{v1['id']}/rollback"),
        ):
            response = await api.request(method, path, headers=stranger)
            assert response.status_code == 404, (method, path)
            assert response.json()["error"] == "ProjectNotFound"
        # The id exists, but in another project: the same 404 as an unknown id.
        theirs = api.url(f"/deployments/{v1['id']}", project="elsewhere")
        response = await api.client.get(theirs, headers=stranger)
        assert response.json()["error"] == "DeploymentNotFound"

    async def test_a_token_is_required(self, api: Api):
        response = await api.client.post(api.url("/deployments"), headers={"Authorization": ""})
        assert response.status_code == 401

    async def test_openapi_documents_the_routes_and_their_errors(self, api: Api):
        spec = (await api.client.get("/openapi.json")).json()
        deploy = spec["paths"]["/api/v1/projects/{project_id}/deployments"]["post"]
        assert {"201", "409", "422", "503"} <= set(deploy["responses"])
        rollback = spec["paths"][
            "/api/v1/projects/{project_id}/deployments/{deployment_id}/rollback"
        ]["post"]
        assert {"201", "404", "409", "503"} <= set(rollback["responses"])
        assert "/api/v1/projects/{project_id}/deployments/pending" in spec["paths"]


class TestRedisDown:
    async def test_a_deploy_with_redis_down_answers_503_and_keeps_the_previous_version(
        self, backend_settings: BackendSettings, own_redis: OwnRedis
    ):
        backends = backend_settings.model_copy(
            update={"config_store": "sqlite", "cache": "redis", "redis_url": own_redis.url}
        )
        async with running_api(backends) as api:
            pipeline = await api.create_active_pipeline()
            await api.ok("POST", "/deployments", 201)
            await api.create_feature(pipeline["id"])
            own_redis.kill()
            response = await api.request("POST", "/deployments")
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
