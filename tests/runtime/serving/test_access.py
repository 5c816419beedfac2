"""Who may read which project, and which user ids are refused."""

from __future__ import annotations

import pytest

from tests.conftest import unique
from tests.runtime.serving.conftest import ServingKit
from tests.runtime.serving.test_endpoints import deployed


class TestProjectAccess:
    async def test_missing_token_is_401(self, kit: ServingKit, project_id: str):
        await deployed(kit, project_id)
        async with kit.client() as client:
            response = await client.get(f"/features/{project_id}/users/u-1")
        assert (response.status_code, response.json()["error"]) == (401, "Unauthorized")

    async def test_forged_token_is_401(self, kit: ServingKit, project_id: str):
        await deployed(kit, project_id)
        async with kit.client(project_id) as client:
            client.headers["authorization"] = client.headers["authorization"][:-2] + "xx"
            response = await client.get(f"/features/{project_id}/users/u-1")
        assert response.status_code == 401

    async def test_project_outside_the_token_is_404_like_an_unknown_one(
        self, kit: ServingKit, project_id: str
    ):
        await deployed(kit, project_id)
        other = unique("shop")
        await deployed(kit, other)
        async with kit.client(other) as client:
            foreign = await client.get(f"/features/{project_id}/users/u-1")
            foreign_batch = await client.post(
                f"/features/{project_id}/users/batch", json={"user_ids": ["u-1"]}
            )
        async with kit.client("*") as client:
            unknown = await client.get(f"/features/{unique('shop')}/users/u-1")
        for response in (foreign, foreign_batch, unknown):
            assert (response.status_code, response.json()["error"]) == (404, "ProjectNotFound")

    @pytest.mark.parametrize("authorization", ["Basic dXNlcjpwdw==", "Bearer", "Bearer  ", ""])
    async def test_anything_but_a_bearer_token_is_401(
        self, kit: ServingKit, project_id: str, authorization: str
    ):
        await deployed(kit, project_id)
        async with kit.client() as client:
            client.headers["authorization"] = authorization
            single = await client.get(f"/features/{project_id}/users/u-1")
            batch = await client.post(
                f"/features/{project_id}/users/batch", json={"user_ids": ["u-1"]}
            )
        for response in (single, batch):
            assert (response.status_code, response.json()["error"]) == (401, "Unauthorized")

    async def test_project_without_deployment_is_404(self, kit: ServingKit, project_id: str):
        async with kit.client(project_id) as client:
            response = await client.get(f"/features/{project_id}/users/u-1")
        assert (response.status_code, response.json()["error"]) == (404, "ProjectNotFound")

    async def test_wildcard_token_reads_any_project(self, kit: ServingKit, project_id: str):
        await deployed(kit, project_id)
        async with kit.client("*") as client:
            response = await client.get(f"/features/{project_id}/users/u-1")
        assert response.status_code == 200

    async def test_foreign_project_with_hostile_user_id_is_still_404(
        self, kit: ServingKit, project_id: str
    ):
        await deployed(kit, project_id)
        async with kit.client(unique("shop")) as client:
            response = await client.get(f"/features/{project_id}/users/$where")
        assert response.status_code == 404


class TestUserIds:
    @pytest.mark.parametrize(
        "user_id",
        ["$where", "%2E%2E", ".hidden", "a" * 129, "u 1", "ü", "u%00", '{"$gt":""}'],
    )
    async def test_hostile_or_malformed_ids_are_422(
        self, kit: ServingKit, project_id: str, user_id: str
    ):
        await deployed(kit, project_id)
        async with kit.client(project_id) as client:
            response = await client.get(f"/features/{project_id}/users/{user_id}")
        assert (response.status_code, response.json()["error"]) == (422, "ValidationError")

    async def test_a_refused_id_is_named_as_the_path_parameter(
        self, kit: ServingKit, project_id: str
    ):
        await deployed(kit, project_id)
        async with kit.client(project_id) as client:
            response = await client.get(f"/features/{project_id}/users/$where")
        [field] = response.json()["fields"]
        assert (field["loc"], field["type"]) == (["path", "user_id"], "string_pattern_mismatch")

    @pytest.mark.parametrize("path", ["../x", "..%2Fx", "a/b"])
    async def test_ids_with_a_slash_match_no_route(self, kit: ServingKit, project_id: str, path):
        await deployed(kit, project_id)
        async with kit.client(project_id) as client:
            response = await client.get(f"/features/{project_id}/users/{path}")
        assert response.status_code == 404
        assert response.json()["error"] in ("NotFound", "ProjectNotFound")

    @pytest.mark.parametrize("user_id", ["u-1", "a" * 128, "mail@shop.com", "k:1+x=y_z.w"])
    async def test_ids_ingestion_accepts_are_served(
        self, kit: ServingKit, project_id: str, user_id: str
    ):
        await deployed(kit, project_id)
        async with kit.client(project_id) as client:
            response = await client.get(f"/features/{project_id}/users/{user_id}")
        assert response.status_code == 200
        assert response.json()["user_id"] == user_id
