"""Redis (replay, dedup, rate limits) going away: requests get 503 with Retry-After and
nothing is acknowledged or produced. Uses a redis-server of its own, killed by pid."""

from __future__ import annotations

import pytest

from app.core.config_loader import publish_config
from app.core.secrets import write_secrets
from app.schemas.pipeline import WebhookSecrets
from app.services.webhook_secrets import generate_secret
from tests.conftest import unique
from tests.factories import pipeline_document
from tests.runtime.ingestion.conftest import IngestApp, Pipeline, ingestion_settings, running
from tests.runtime.ingestion.helpers import config_snapshot, event, pipeline_snapshot
from tests.support.own_redis import OwnRedis

pytestmark = [pytest.mark.kafka, pytest.mark.mongodb]


async def test_cache_down_is_503_with_retry_after_and_nothing_is_produced(
    own_redis: OwnRedis,
) -> None:
    settings = ingestion_settings()
    settings.backends.redis_url = own_redis.url
    async for app, client in running(settings):
        ingest = IngestApp(app, client, settings, [])
        resources = ingest.resources
        assert resources.cache is not None
        assert resources.config_store is not None
        project_id, secret = unique("shop"), generate_secret()
        # The pipeline exists in the store too, so its secret stays readable without Redis.
        doc = pipeline_document(project_id, status="active", webhook_secret=secret)
        await resources.config_store.insert_pipeline(doc)
        await publish_config(
            resources.cache, config_snapshot(project_id, [pipeline_snapshot(doc.id)])
        )
        await write_secrets(resources.cache, project_id, doc.id, WebhookSecrets(current=secret))
        pipe = Pipeline(ingest, project_id, doc.id, WebhookSecrets(current=secret))
        assert (await pipe.post(event())).status_code == 202

        own_redis.kill()
        single = await pipe.post(event())
        batch = await pipe.post({"events": [event(), event()]}, batch=True)

    for response in (single, batch):
        assert response.status_code == 503, response.text
        assert response.json()["error"] == "ServiceUnavailable"
        assert int(response.headers["retry-after"]) > 0
    assert len(await ingest.messages(project_id)) == 1
