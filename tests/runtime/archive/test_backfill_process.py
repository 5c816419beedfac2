"""Backfill on deploy run by the real archive process (`python -m runtime.archive.main`)
on FerretDB, Kafka, Redis and chDB, SIGKILLed in the middle of filling and restarted:
the deployment resumes and goes live, and the features equal the oracle over every
event, the past ones a 30-day feature had never seen included."""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from app.core.settings import BackendSettings
from app.db import factory
from app.db.config_store import ConfigStore
from app.schemas.deployment import AggregateFeatureSnapshot
from app.schemas.event import record_key
from app.services.deployment_service import DeploymentService
from app.tiles.record import serve
from runtime.compute.specs import build_specs
from runtime.compute.worker import wall_clock_ms
from tests.conftest import unique
from tests.runtime.compute.harness import ComputeKit, started_kit
from tests.runtime.compute.oracle import RawEvent, assert_same_values, message, oracle_values
from tests.services.test_deployment_service import add_feature, add_pipeline
from tests.support.processes import ServiceProcess

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.slow]

BOUND_S = 180.0  # turns a hang into a failure; not a timing assertion
NOW = wall_clock_ms() // 60_000 * 60_000
MINUTE, DAY = 60_000, 86_400_000
USERS = 600


def archive_process(settings: BackendSettings, log_dir: Path) -> ServiceProcess:
    env = {
        **os.environ,
        "ENVIRONMENT": "development",
        "LOG_LEVEL": "WARNING",
        "EVENT_LOG": "kafka",
        "ANALYTICS": "chdb",
        "CONFIG_STORE": "mongodb",
        "ONLINE_STORE": "redis",
        "CACHE": "redis",
        "DATA_DIR": str(settings.data_dir),
        "MONGODB_URL": settings.mongodb_url,
        "MONGODB_DATABASE": settings.mongodb_database,
        "REDIS_URL": settings.redis_url,
        "KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "KAFKA_TOPIC": settings.kafka_topic,
        "ARCHIVE_CONSUMER_GROUP": unique("archive"),
        "ARCHIVE_BACKFILL_SETTLE_S": "1",
        # Many small chunks: a fill to be killed in the middle of.
        "ARCHIVE_BACKFILL_CHUNK_USERS": "5",
    }
    return ServiceProcess.runtime("archive", "runtime.archive.main", "ARCHIVE_", env, log_dir)


@pytest.fixture
async def kit(backend_settings: BackendSettings) -> AsyncIterator[ComputeKit]:
    async with started_kit(backend_settings, "redis", NOW) as k:
        yield k


@pytest.fixture
async def mongo(backend_settings: BackendSettings) -> AsyncIterator[ConfigStore]:
    store = factory.make_config_store(
        backend_settings.model_copy(update={"config_store": "mongodb"})
    )
    await store.initialize()
    try:
        yield store
    finally:
        await store.close()


async def produce(kit: ComputeKit, project: str, events: list[RawEvent], first: int) -> None:
    await kit.producer.produce_many(
        [
            (record_key(project, e.user_id), message(project, e, 1, first + i).encode())
            for i, e in enumerate(events)
        ]
    )


class TestKilledMidBackfill:
    async def test_a_killed_backfill_resumes_and_the_features_equal_the_oracle(
        self, kit: ComputeKit, mongo: ConfigStore, backend_settings: BackendSettings, tmp_path: Path
    ) -> None:
        rng = random.Random(3)
        project = unique("proj")
        deployments = DeploymentService(mongo, kit.cache, backfill=True)
        pl = await add_pipeline(mongo, project)
        await add_feature(mongo, project, pl.id, name="carts", time_windows=["1h"])
        v1 = await deployments.deploy(project, "alice")
        assert v1.status == "success"

        def some(count: int, max_age_ms: int) -> list[RawEvent]:
            return [
                RawEvent(
                    f"u{rng.randrange(USERS)}",
                    pl.id,
                    "add_to_cart",
                    NOW - rng.randrange(0, max_age_ms),
                    {"product_id": f"sku-{rng.randrange(9)}", "price": rng.randrange(1, 99)},
                )
                for _ in range(count)
            ]

        past = some(3000, 20 * DAY)  # mostly older than the live 1h window
        sent = list(past)
        await produce(kit, project, past, 0)
        compute = kit.run()
        await compute.wait_processed(len(sent))
        process = archive_process(backend_settings, tmp_path)
        process.start()
        try:
            async with httpx.AsyncClient(timeout=5) as client:
                await process.wait_healthy(client)
                await add_feature(mongo, project, pl.id, name="carts_30d", time_windows=["30d"])
                v2 = await deployments.deploy(project, "alice")
                assert v2.status == "backfilling"
                async with asyncio.timeout(BOUND_S):
                    while True:  # another process: polling its progress is all there is
                        doc = await mongo.get_deployment(project, v2.id)
                        assert doc is not None
                        assert doc.backfill is not None, doc
                        assert doc.status == "backfilling", (doc.status, doc.error)
                        if doc.backfill.users_done >= 50:
                            break
                        await asyncio.sleep(0.02)
                process.kill()
                killed_at = doc.backfill.users_done
                assert killed_at < USERS
                # Events while no runner runs, then the restart.
                during = some(200, 30 * MINUTE)
                await produce(kit, project, during, len(sent))
                sent += during
                process.start()
                await process.wait_healthy(client)
                async with asyncio.timeout(BOUND_S):
                    while True:
                        doc = await mongo.get_deployment(project, v2.id)
                        assert doc is not None
                        if doc.status != "backfilling":
                            break
                        await asyncio.sleep(0.1)
                assert doc.status == "success", (doc.error, process.log_tail())
                assert doc.backfill is not None
                assert doc.backfill.users_done >= USERS - killed_at
            await compute.wait_processed(len(sent))
        finally:
            process.terminate()

        specs = build_specs(doc.snapshot).specs
        for user in sorted({e.user_id for e in sent}):
            stored = await kit.store.get(project, user)
            got = serve(stored.record if stored else None, specs, NOW)
            aggregates = [
                f for f in doc.snapshot.features if isinstance(f, AggregateFeatureSnapshot)
            ]
            want = oracle_values(aggregates, [e for e in sent if e.user_id == user], NOW)
            assert_same_values(got, want)
        await compute.stop()
