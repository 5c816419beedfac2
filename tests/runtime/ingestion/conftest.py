"""An ingestion app on the real servers (Kafka, Redis, FerretDB), one per module, and a
fresh project with a deployed pipeline and secrets per test.

Snapshots and secrets are published into Redis the way the config API does it
(`publish_config`, `write_secrets`); the app's loader and secret provider read them back.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.core.config_loader import publish_config
from app.core.secrets import write_secrets
from app.core.service import Resources
from app.core.settings import BackendSettings, IngestionSettings
from app.schemas.event import EventMessage
from app.schemas.pipeline import WebhookSecrets
from runtime.ingestion.main import create_app
from runtime.ingestion.routes import INGESTION_SERVICE
from runtime.ingestion.service import IngestionService
from tests.conftest import KAFKA_BOOTSTRAP, MONGODB_URL, REDIS_URL, unique
from tests.runtime.ingestion.helpers import (
    config_snapshot,
    new_secrets,
    pipeline_id,
    pipeline_snapshot,
    read_topic,
    signed,
)

# Projects whose names start with this get a tiny rate limit (INGEST_RATE_LIMIT_OVERRIDES).
LIMITED_PREFIX = "limited"
LIMITED_RATE = "3/minute"


@dataclass
class IngestApp:
    app: FastAPI
    client: httpx.AsyncClient
    settings: IngestionSettings
    limited_projects: list[str]

    @property
    def resources(self) -> Resources:
        resources: Resources = self.app.state.resources
        return resources

    async def confirms_sent(self) -> None:
        """Returns once the confirms of the requests answered so far reached the cache
        (they are sent after the answer: runtime/ingestion/claims.py)."""
        service = self.resources.extras[INGESTION_SERVICE]
        assert isinstance(service, IngestionService)
        await service.drain()

    async def messages(self, project_id: str) -> list[EventMessage]:
        """Every message of `project_id` on the module's topic."""
        topic = self.settings.backends.kafka_topic
        return [m for m in await read_topic(KAFKA_BOOTSTRAP, topic) if m.project_id == project_id]


def ingestion_settings(**overrides: Any) -> IngestionSettings:
    backends = BackendSettings(
        mongodb_url=MONGODB_URL,
        mongodb_database=unique("dps_ingest"),
        kafka_bootstrap=KAFKA_BOOTSTRAP,
        kafka_topic=unique("events"),
        redis_url=REDIS_URL,
    )
    values: dict[str, Any] = {
        "environment": "development",
        "backends": backends,
        "rate_limit_project": "100000/minute",
        "rate_limit_pipeline": "100000/minute",
    }
    values.update(overrides)
    return IngestionSettings(**values)


async def running(settings: IngestionSettings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as client:
            yield app, client


@pytest.fixture(scope="module")
async def ingest() -> AsyncIterator[IngestApp]:
    limited = [f"{LIMITED_PREFIX}-{uuid.uuid4().hex[:12]}" for _ in range(5)]
    settings = ingestion_settings(rate_limit_overrides=dict.fromkeys(limited, LIMITED_RATE))
    async for app, client in running(settings):
        yield IngestApp(app, client, settings, limited)


@dataclass
class Pipeline:
    """A deployed, active pipeline with its secrets, and a signed-request helper."""

    ingest: IngestApp
    project_id: str
    pipeline_id: str
    secrets: WebhookSecrets

    @property
    def path(self) -> str:
        return f"/ingest/{self.project_id}/{self.pipeline_id}"

    async def post(
        self,
        payload: Any = None,
        *,
        batch: bool = False,
        secret: str | None = None,
        webhook_id: str | None = None,
        timestamp_s: int | None = None,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        body, signed_headers = signed(
            secret or self.secrets.current,
            payload,
            webhook_id=webhook_id,
            timestamp_s=timestamp_s,
            raw=raw,
        )
        url = f"{self.path}/batch" if batch else self.path
        return await self.ingest.client.post(
            url, content=body, headers={**signed_headers, **(headers or {})}
        )

    async def messages(self) -> list[EventMessage]:
        return await self.ingest.messages(self.project_id)


async def deploy_pipelines(
    ingest: IngestApp,
    project_id: str,
    statuses: list[str],
    *,
    secrets: WebhookSecrets | None = None,
) -> list[Pipeline]:
    """Publishes a snapshot (version 1) with one pipeline per status, and each
    pipeline's secrets, into Redis."""
    cache = ingest.resources.cache
    assert cache is not None
    ids = [pipeline_id() for _ in statuses]
    snapshots = [pipeline_snapshot(pid, status=s) for pid, s in zip(ids, statuses, strict=True)]
    await publish_config(cache, config_snapshot(project_id, snapshots))
    pipelines = []
    for pid in ids:
        pipeline_secrets = secrets or new_secrets()
        await write_secrets(cache, project_id, pid, pipeline_secrets)
        pipelines.append(Pipeline(ingest, project_id, pid, pipeline_secrets))
    return pipelines


async def deploy_pipeline(
    ingest: IngestApp,
    project_id: str,
    *,
    status: str = "active",
    secrets: WebhookSecrets | None = None,
) -> Pipeline:
    """Publishes a one-pipeline snapshot and the pipeline's secrets into Redis."""
    [pipeline] = await deploy_pipelines(ingest, project_id, [status], secrets=secrets)
    return pipeline


@pytest.fixture
async def pipeline(ingest: IngestApp) -> Pipeline:
    return await deploy_pipeline(ingest, unique("shop"))
