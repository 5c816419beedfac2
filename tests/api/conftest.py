"""API fixtures: the real config API app, run inside its lifespan, over both config
stores (SQLite and FerretDB), with real HS256 tokens and the in-process cache."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr
from pymongo import AsyncMongoClient

from app.core.auth import issue_token
from app.core.service import Resources
from app.core.settings import AuthSettings, BackendSettings, ConfigApiSettings
from main import create_app
from tests.conftest import unique
from tests.factories import feature_payload, pipeline_payload

JWT_SECRET = "api-tests-" + "k" * 40
INGEST_URL = "https://ingest.example.test"


@dataclass
class Api:
    """An authenticated client for one project, plus what tests need to build others."""

    app: FastAPI
    client: httpx.AsyncClient
    project: str
    auth: AuthSettings

    def url(self, path: str, project: str | None = None) -> str:
        """Returns `/api/v1/projects/{project}{path}`."""
        return f"/api/v1/projects/{project or self.project}{path}"

    def token(self, projects: list[str], ttl_seconds: int = 3600) -> str:
        return issue_token(self.auth, "user_1", projects, ttl_seconds=ttl_seconds)

    def bearer(self, projects: list[str], ttl_seconds: int = 3600) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(projects, ttl_seconds)}"}

    @property
    def resources(self) -> Resources:
        resources: Resources = self.app.state.resources
        return resources

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return await self.client.request(method, self.url(path), **kwargs)

    async def create_pipeline(self, **overrides: Any) -> dict[str, Any]:
        response = await self.client.post(
            self.url("/pipelines"), json=pipeline_payload(**overrides)
        )
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        return body

    async def create_feature(self, pipeline_id: str, **overrides: Any) -> dict[str, Any]:
        payload = feature_payload(pipeline_id, **overrides)
        response = await self.client.post(self.url("/features"), json=payload)
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        return body


async def _drop_database(settings: BackendSettings) -> None:
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(
        settings.mongodb_url, serverSelectionTimeoutMS=5000
    )
    try:
        await client.drop_database(settings.mongodb_database)
    finally:
        await client.close()


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("mongodb", id="mongodb", marks=pytest.mark.mongodb),
    ]
)
async def api(
    request: pytest.FixtureRequest, backend_settings: BackendSettings
) -> AsyncIterator[Api]:
    """The config API on one config store, with a client whose token allows one project."""
    backends = backend_settings.model_copy(
        update={"config_store": request.param, "cache": "memory"}
    )
    auth = AuthSettings(secret=SecretStr(JWT_SECRET))
    settings = ConfigApiSettings(
        environment="development",
        backends=backends,
        auth=auth,
        public_ingest_url=INGEST_URL,
        default_rotation_grace_hours=24,
    )
    app = create_app(settings)
    project = unique("shop")
    headers = {"Authorization": f"Bearer {issue_token(auth, 'user_1', [project])}"}
    try:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://api.test", headers=headers
            ) as client:
                yield Api(app=app, client=client, project=project, auth=auth)
    finally:
        if request.param == "mongodb":
            await _drop_database(backends)
