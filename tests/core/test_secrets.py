"""Webhook secrets for ingestion: Redis copy, store fallback, change notices, outages."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from app.core.errors import ConfigUnavailable
from app.core.secrets import SecretProvider, secrets_key, secrets_of
from app.db.cache import Cache
from app.db.config_store import ConfigStore
from app.db.documents import PipelineDocument
from app.schemas.pipeline import WebhookSecrets
from app.services.secret_publisher import SecretPublisher
from app.services.webhook_secrets import generate_secret
from tests.factories import new_id, pipeline_document
from tests.support.own_redis import OwnRedis

pytestmark = pytest.mark.redis

BOUND_S = 15.0  # a hang fails the test; not a timing assertion


@asynccontextmanager
async def running(provider: SecretProvider) -> AsyncIterator[SecretProvider]:
    await provider.start()
    try:
        yield provider
    finally:
        await provider.stop()


async def stored_pipeline(store: ConfigStore, project_id: str, **kw: Any) -> PipelineDocument:
    doc = pipeline_document(project_id, webhook_secret=generate_secret(), **kw)
    await store.insert_pipeline(doc)
    return doc


async def rotate(store: ConfigStore, doc: PipelineDocument) -> PipelineDocument:
    current = await store.get_pipeline(doc.project_id, doc.id)
    assert current is not None
    rotated = current.model_copy(
        update={
            "webhook_secret": generate_secret(),
            "previous_webhook_secret": current.webhook_secret,
            "previous_secret_expires_at": datetime.now(UTC) + timedelta(hours=1),
            "revision": current.revision + 1,
        }
    )
    assert await store.replace_pipeline(rotated, current.revision)
    return rotated


class TestSecretsOf:
    def test_an_expired_previous_secret_is_left_out(self, project_id):
        now = datetime.now(UTC)
        doc = pipeline_document(
            project_id,
            previous_webhook_secret="whsec_old",
            previous_secret_expires_at=now - timedelta(seconds=1),
        )
        assert secrets_of(doc, now) == WebhookSecrets(current=doc.webhook_secret)
        later = doc.model_copy(update={"previous_secret_expires_at": now + timedelta(hours=1)})
        assert secrets_of(later, now).previous == "whsec_old"


class TestProvider:
    async def test_reads_the_published_copy(self, config_store, cache, project_id):
        pipeline_id = new_id()  # only in Redis: proves the copy is read, not the store
        secrets = WebhookSecrets(current=generate_secret())
        assert await SecretPublisher(cache).publish(project_id, pipeline_id, secrets)
        assert await SecretProvider(cache, config_store).get(project_id, pipeline_id) == secrets

    async def test_falls_back_to_the_store_and_fills_redis(self, config_store, cache, project_id):
        doc = await stored_pipeline(config_store, project_id)
        got = await SecretProvider(cache, config_store).get(project_id, doc.id)
        assert got == WebhookSecrets(current=doc.webhook_secret)
        raw = await cache.get(secrets_key(project_id, doc.id))
        assert raw is not None
        assert WebhookSecrets.model_validate_json(raw) == got

    async def test_concurrent_requests_for_an_expired_copy_share_one_read(
        self, config_store, cache, project_id
    ):
        pipeline_id = new_id()
        secrets = WebhookSecrets(current=generate_secret())
        assert await SecretPublisher(cache).publish(project_id, pipeline_id, secrets)
        reads: list[str] = []
        real_get = cache.get

        async def counted_get(key: str) -> bytes | None:  # the real cache, counted
            reads.append(key)
            return await real_get(key)

        cache.get = counted_get
        provider = SecretProvider(cache, config_store, ttl_s=0.01)
        for _ in range(3):  # the held copy expires between the rounds
            got = await asyncio.gather(*(provider.get(project_id, pipeline_id) for _ in range(32)))
            assert got == [secrets] * 32
            await asyncio.sleep(0.02)
        assert reads == [secrets_key(project_id, pipeline_id)] * 3

    async def test_an_unknown_pipeline_has_no_secrets(self, config_store, cache, project_id):
        assert await SecretProvider(cache, config_store).get(project_id, new_id()) is None

    async def test_a_rotation_reaches_a_running_provider_through_the_notice(
        self, config_store, cache, project_id
    ):
        doc = await stored_pipeline(config_store, project_id)
        provider = SecretProvider(cache, config_store, ttl_s=3600)
        async with running(provider):
            assert (await provider.get(project_id, doc.id)) == secrets_of(doc)
            rotated = await rotate(config_store, doc)
            await asyncio.sleep(0.2)  # the subscription is live after its first read
            started = time.perf_counter()
            await SecretPublisher(cache).publish(project_id, doc.id, secrets_of(rotated))
            while (await provider.get(project_id, doc.id)) != secrets_of(rotated):
                assert time.perf_counter() - started < BOUND_S
                await asyncio.sleep(0.01)
            took_ms = (time.perf_counter() - started) * 1000
            print(f"\nrotation live in ingestion after {took_ms:.1f} ms")
        got = await provider.get(project_id, doc.id)
        assert got is not None
        assert got.previous == doc.webhook_secret

    async def test_a_deleted_pipeline_is_forgotten(self, config_store, cache, project_id):
        doc = await stored_pipeline(config_store, project_id)
        provider = SecretProvider(cache, config_store, ttl_s=3600)
        async with running(provider):
            assert await provider.get(project_id, doc.id) is not None
            await config_store.delete_pipeline(project_id, doc.id)
            await asyncio.sleep(0.2)
            assert await SecretPublisher(cache).forget(project_id, doc.id)
            started = time.perf_counter()
            while await provider.get(project_id, doc.id) is not None:
                assert time.perf_counter() - started < BOUND_S
                await asyncio.sleep(0.01)
        assert await cache.get(secrets_key(project_id, doc.id)) is None


class TestOutages:
    async def test_redis_down_reads_the_store(
        self, config_store, own_redis: OwnRedis, own_cache: Cache, project_id
    ):
        doc = await stored_pipeline(config_store, project_id)
        own_redis.kill()
        got = await SecretProvider(own_cache, config_store).get(project_id, doc.id)
        assert got == secrets_of(doc)

    async def test_both_down_keeps_serving_what_it_had(
        self, config_store, own_redis: OwnRedis, own_cache: Cache, project_id
    ):
        doc = await stored_pipeline(config_store, project_id)
        provider = SecretProvider(own_cache, config_store, ttl_s=0.01)
        assert await provider.get(project_id, doc.id) == secrets_of(doc)
        own_redis.kill()
        await config_store.close()
        await asyncio.sleep(0.05)  # past the in-process TTL
        assert await provider.get(project_id, doc.id) == secrets_of(doc)
        with pytest.raises(ConfigUnavailable):
            await provider.get(project_id, new_id())

    async def test_the_publisher_reports_an_unreachable_redis(
        self, own_redis: OwnRedis, own_cache: Cache, project_id
    ):
        own_redis.kill()
        publisher = SecretPublisher(own_cache)
        assert not await publisher.publish(project_id, new_id(), WebhookSecrets(current="whsec_x"))
        assert not await publisher.forget(project_id, new_id())
