"""Redis (replay, dedup, rate limits, the config and secret copies) restarting under
ingestion: 503 with Retry-After while it is gone, and the very next request after it is
back is served (every Redis client reconnects by itself). A redis-server of the test's
own, killed and restarted on the same port by pid."""

from __future__ import annotations

import asyncio

import pytest

from app.core.config_loader import publish_config
from app.core.secrets import write_secrets
from app.core.settings import BackendSettings
from app.db.cache import Admission, CacheUnavailable, RateWindow, Verdict
from app.db.redis_cache import RedisCache
from app.schemas.pipeline import WebhookSecrets
from app.services.webhook_secrets import generate_secret
from tests.conftest import unique
from tests.factories import deployment_document, pipeline_document
from tests.runtime.ingestion.conftest import IngestApp, Pipeline, ingestion_settings, running
from tests.runtime.ingestion.helpers import config_snapshot, event, pipeline_snapshot
from tests.support.own_redis import OwnRedis

pytestmark = [pytest.mark.kafka, pytest.mark.mongodb]


async def test_first_request_after_redis_restart_is_served(own_redis: OwnRedis) -> None:
    settings = ingestion_settings()
    settings.backends.redis_url = own_redis.url
    async for app, client in running(settings):
        ingest = IngestApp(app, client, settings, [])
        resources = ingest.resources
        assert resources.cache is not None
        assert resources.config_store is not None
        project_id, secret = unique("shop"), generate_secret()
        # The store holds the pipeline and its deployment, as the config API leaves them:
        # a restarted (empty) Redis is refilled from there.
        doc = pipeline_document(project_id, status="active", webhook_secret=secret)
        await resources.config_store.insert_pipeline(doc)
        snapshot = config_snapshot(project_id, [pipeline_snapshot(doc.id)])
        await resources.config_store.insert_deployment(
            deployment_document(project_id, snapshot.version, snapshot=snapshot)
        )
        await publish_config(resources.cache, snapshot)
        await write_secrets(resources.cache, project_id, doc.id, WebhookSecrets(current=secret))
        pipe = Pipeline(ingest, project_id, doc.id, WebhookSecrets(current=secret))
        assert (await pipe.post(event())).status_code == 202

        own_redis.kill()
        down = await pipe.post(event())
        own_redis.start()
        statuses = []
        for _ in range(3):
            response = await pipe.post(event())
            statuses.append((response.status_code, response.text[:200]))

    assert down.status_code == 503, down.text
    assert int(down.headers["retry-after"]) >= 1
    assert [code for code, _ in statuses] == [202, 202, 202], statuses


async def test_every_pooled_admission_connection_heals_after_a_restart(
    own_redis: OwnRedis,
) -> None:
    cache = RedisCache(BackendSettings(redis_url=own_redis.url))
    await cache.initialize()
    window = RateWindow("dps:rl:project:shop", 100_000, 60)

    async def admit() -> Verdict:
        [admitted] = await cache.admit_many([Admission(unique("g"), windows=(window,))], 60)
        return admitted.verdict

    try:
        # 16 admissions at once leave 16 pooled connections, all dead after the restart.
        assert set(await asyncio.gather(*(admit() for _ in range(16)))) == {Verdict.ADMITTED}
        own_redis.kill()
        with pytest.raises(CacheUnavailable):
            await admit()
        own_redis.start()
        assert set(await asyncio.gather(*(admit() for _ in range(16)))) == {Verdict.ADMITTED}
    finally:
        await cache.close()
