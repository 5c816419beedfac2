"""API fixtures: the real config API app, run inside its lifespan, over both config
stores (SQLite and FerretDB), with real HS256 tokens and the in-process cache."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr

from app.core.auth import issue_token
from app.core.service import Resources
from app.core.settings import AuthSettings, BackendSettings, ConfigApiSettings
from main import create_app
from tests.conftest import unique
from tests.factories import feature_payload, pipeline_payload
from tests.support.apps import bearer, in_process

JWT_SECRET = "api-tests-" + "k" * 40
INGEST_URL = "https://ingest.example.test"
# Whom the default client's token names (a deployment's `deployed_by`).
SUBJECT = "alice"


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

    def token(self, projects: list[str], ttl_seconds: int = 3600, subject: str = SUBJECT) -> str:
        return issue_token(self.auth, subject, projects, ttl_seconds=ttl_seconds)

    def bearer(
        self, projects: list[str], ttl_seconds: int = 3600, subject: str = SUBJECT
    ) -> dict[str, str]:
        return bearer(self.auth, subject, projects, ttl_seconds)

    @property
    def resources(self) -> Resources:
        resources: Resources = self.app.state.resources
        return resources

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return await self.client.request(method, self.url(path), **kwargs)

    async def ok(self, method: str, path: str, code: int = 200, **kwargs: Any) -> Any:
        """Calls the project's `path`, asserts the status `code`; returns the JSON body
        (None when empty)."""
        response = await self.request(method, path, **kwargs)
        assert response.status_code == code, response.text
        return response.json() if response.content else None

    async def create_pipeline(self, **overrides: Any) -> dict[str, Any]:
        body: dict[str, Any] = await self.ok(
            "POST", "/pipelines", 201, json=pipeline_payload(**overrides)
        )
        return body

    async def create_active_pipeline(self, **overrides: Any) -> dict[str, Any]:
        pipeline = await self.create_pipeline(**overrides)
        body: dict[str, Any] = await self.ok("POST", f"/pipelines/{pipeline['id']}/activate")
        return body

    async def create_feature(self, pipeline_id: str, **overrides: Any) -> dict[str, Any]:
        payload = feature_payload(pipeline_id, **overrides)
        body: dict[str, Any] = await self.ok("POST", "/features", 201, json=payload)
        return body


@asynccontextmanager
async def running_api(backends: BackendSettings) -> AsyncIterator[Api]:
    """The config API on `backends`, with a client whose token allows one new project."""
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
    headers = bearer(auth, SUBJECT, [project])
    async with in_process(app, "http://api.test", headers=headers) as client:
        yield Api(app=app, client=client, project=project, auth=auth)


@pytest.fixture
async def api(config_backends: BackendSettings) -> AsyncIterator[Api]:
    """The config API on each config store, with the in-process cache."""
    async with running_api(config_backends.model_copy(update={"cache": "memory"})) as running:
        yield running
