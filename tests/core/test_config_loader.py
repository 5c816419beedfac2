"""The config loader against the real Redis and both config stores, outages included."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from app.core.config_loader import (
    ConfigLoader,
    config_key,
    live_features,
    live_pipelines,
    version_key,
    write_config,
)
from app.core.errors import ConfigUnavailable
from app.core.settings import BackendSettings
from app.db.cache import Cache, CacheUnavailable
from app.db.config_store import ConfigStore
from app.db.redis_cache import RedisCache
from app.schemas.deployment import ConfigSnapshot
from app.schemas.pipeline import EventDefinition
from app.services.config_diff import snapshot_from_draft
from app.services.deployment_service import DeploymentService
from tests.conftest import REDIS_URL
from tests.factories import feature_document, pipeline_document
from tests.support.own_redis import OwnRedis

pytestmark = pytest.mark.redis

# Generous bound for "arrives": a hang fails the test instead of blocking the suite.
# Not a timing assertion; the measured latency is printed.
ARRIVAL_BOUND_S = 15.0


async def eventually(check: Callable[[], Any], bound_s: float = ARRIVAL_BOUND_S) -> float:
    """Waits until `check()` is truthy; returns the seconds it took."""
    started = time.perf_counter()
    while not check():
        if time.perf_counter() - started > bound_s:
            raise AssertionError(f"condition not met within {bound_s}s")
        await asyncio.sleep(0.005)
    return time.perf_counter() - started


def held_version(loader: ConfigLoader, project_id: str) -> int | None:
    snapshot = loader.peek(project_id)
    return snapshot.version if snapshot is not None else None


async def loaded_version(loader: ConfigLoader, project_id: str) -> int | None:
    snapshot = await loader.get(project_id)
    return snapshot.version if snapshot is not None else None


async def wait_version(loader: ConfigLoader, project_id: str, version: int) -> float:
    """Waits until the loader holds `version`; returns the seconds it took."""
    return await eventually(lambda: held_version(loader, project_id) == version)


@asynccontextmanager
async def running(loader: ConfigLoader, **kw: Any) -> AsyncIterator[ConfigLoader]:
    await loader.start(**kw)
    try:
        yield loader
    finally:
        await loader.stop()


@asynccontextmanager
async def another_cache(url: str = REDIS_URL) -> AsyncIterator[RedisCache]:
    """A second connection pool, as another process would have."""
    cache = RedisCache(BackendSettings(redis_url=url))
    await cache.initialize()
    try:
        yield cache
    finally:
        await cache.close()


async def add_draft(store: ConfigStore, project_id: str) -> None:
    p = pipeline_document(project_id, status="active")
    await store.insert_pipeline(p)
    await store.insert_feature(feature_document(project_id, p.id))


def count_calls(store: ConfigStore, name: str, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts calls of a real store method (it still runs)."""
    calls = [0]
    real = getattr(store, name)

    async def counted(*args: Any, **kw: Any) -> Any:
        calls[0] += 1
        return await real(*args, **kw)

    monkeypatch.setattr(store, name, counted)
    return calls


class TestReading:
    async def test_get_reads_the_published_config_and_peek_holds_it(
        self, config_store, cache, project_id
    ):
        await add_draft(config_store, project_id)
        await DeploymentService(config_store, cache).deploy(project_id, "alice")
        loader = ConfigLoader(cache, config_store)
        assert loader.peek(project_id) is None
        snapshot = await loader.get(project_id)
        assert snapshot is not None
        assert snapshot.version == 1
        assert loader.peek(project_id) is snapshot
        assert loader.projects() == [project_id]

    async def test_an_empty_redis_is_filled_from_the_latest_successful_deployment(
        self, config_store, cache, project_id
    ):
        await add_draft(config_store, project_id)
        await DeploymentService(config_store, cache).deploy(project_id, "alice")
        await cache.delete(config_key(project_id))
        await cache.delete(version_key(project_id))
        snapshot = await ConfigLoader(cache, config_store).get(project_id)
        assert snapshot is not None
        assert snapshot.version == 1
        assert await cache.get(version_key(project_id)) == b"1"
        raw = await cache.get(config_key(project_id))
        assert raw is not None
        assert ConfigSnapshot.model_validate_json(raw) == snapshot

    async def test_an_unknown_project_is_cached_as_missing_for_a_moment(
        self, config_store, cache, project_id, monkeypatch
    ):
        calls = count_calls(config_store, "latest_deployment", monkeypatch)
        loader = ConfigLoader(cache, config_store, negative_ttl_s=60)
        for _ in range(20):
            assert await loader.get(project_id) is None
        assert calls[0] == 1

    async def test_the_missing_mark_expires(self, config_store, cache, project_id, monkeypatch):
        calls = count_calls(config_store, "latest_deployment", monkeypatch)
        loader = ConfigLoader(cache, config_store, negative_ttl_s=0.05)
        assert await loader.get(project_id) is None
        await asyncio.sleep(0.1)
        assert await loader.get(project_id) is None
        assert calls[0] == 2

    async def test_live_helpers_keep_only_what_runs(self, project_id):
        p = pipeline_document(
            project_id,
            status="active",
            events=[EventDefinition(name="on_event"), EventDefinition(name="off", enabled=False)],
        )
        q = pipeline_document(project_id, status="inactive")
        features = [
            feature_document(project_id, p.id, source_event="on_event"),
            feature_document(project_id, p.id, source_event="on_event", enabled=False),
            feature_document(project_id, p.id, source_event="off"),
            feature_document(project_id, q.id),
        ]
        snapshot = snapshot_from_draft(project_id, 1, [p, q], features)
        assert [(x.id, [e.name for e in x.events]) for x in live_pipelines(snapshot)] == [
            (p.id, ["on_event"])
        ]
        assert [f.id for f in live_features(snapshot)] == [features[0].id]


class TestLiveReload:
    async def test_a_deploy_is_live_in_another_loader_within_a_second(
        self, config_store, cache, project_id
    ):
        await add_draft(config_store, project_id)
        deployer = DeploymentService(config_store, cache)
        await deployer.deploy(project_id, "alice")
        latencies = []
        async with another_cache() as other, running(ConfigLoader(other, config_store)) as loader:
            assert await loaded_version(loader, project_id) == 1
            for version in (2, 3, 4):
                await config_store.insert_pipeline(pipeline_document(project_id))
                started = time.perf_counter()
                await deployer.deploy(project_id, "alice")
                await wait_version(loader, project_id, version)
                latencies.append(time.perf_counter() - started)
        print(
            "\ndeploy → live in another loader (pub/sub): "
            + ", ".join(f"{s * 1000:.1f} ms" for s in latencies)
        )

    async def test_a_lost_notice_is_caught_by_the_poll(self, config_store, cache, project_id):
        await add_draft(config_store, project_id)
        await DeploymentService(config_store, cache).deploy(project_id, "alice")
        async with running(ConfigLoader(cache, config_store, poll_interval_s=0.5)) as loader:
            v1 = await loader.get(project_id)
            assert v1 is not None
            # Written without the announcement, as if the notice had been lost.
            started = time.perf_counter()
            await write_config(cache, v1.model_copy(update={"version": 7}))
            await eventually(lambda: held_version(loader, project_id) == 7)
            took_ms = (time.perf_counter() - started) * 1000
            print(f"\nunannounced change picked up by the poll in {took_ms:.0f} ms")

    async def test_a_first_deploy_clears_the_missing_mark(self, config_store, cache, project_id):
        async with running(ConfigLoader(cache, config_store, negative_ttl_s=3600)) as loader:
            assert await loader.get(project_id) is None
            await add_draft(config_store, project_id)
            await DeploymentService(config_store, cache).deploy(project_id, "alice")
            await eventually(lambda: loader.peek(project_id) is not None)
            snapshot = await loader.get(project_id)
            assert snapshot is not None
            assert snapshot.version == 1

    async def test_on_change_callbacks_see_every_new_version(self, config_store, cache, project_id):
        await add_draft(config_store, project_id)
        deployer = DeploymentService(config_store, cache)
        await deployer.deploy(project_id, "alice")
        seen_sync: list[int] = []
        seen_async: list[int] = []

        async def record(snapshot: ConfigSnapshot) -> None:
            seen_async.append(snapshot.version)

        def explode(snapshot: ConfigSnapshot) -> None:
            raise RuntimeError("a broken callback must not stop the others")

        loader = ConfigLoader(cache, config_store)
        loader.on_change(lambda s: seen_sync.append(s.version))
        loader.on_change(explode)
        loader.on_change(record)
        async with running(loader):
            await loader.get(project_id)
            await config_store.insert_pipeline(pipeline_document(project_id))
            await deployer.deploy(project_id, "alice")
            await eventually(lambda: seen_async == [1, 2])
        assert seen_sync == [1, 2]

    async def test_start_preloads_every_deployed_project(self, config_store, cache, project_id):
        await add_draft(config_store, project_id)
        await DeploymentService(config_store, cache).deploy(project_id, "alice")
        async with running(ConfigLoader(cache, config_store)) as loader:
            snapshot = loader.peek(project_id)
            assert snapshot is not None
            assert snapshot.version == 1


class TestOutages:
    async def test_redis_killed_and_restarted_during_operation(
        self, config_store, own_redis: OwnRedis, own_cache: Cache, project_id
    ):
        await add_draft(config_store, project_id)
        deployer = DeploymentService(config_store, own_cache)
        await deployer.deploy(project_id, "alice")
        async with (
            another_cache(own_redis.url) as other,
            running(ConfigLoader(other, config_store)) as loader,
        ):
            assert await loaded_version(loader, project_id) == 1

            own_redis.kill()
            await asyncio.sleep(1.5)  # let the poll and the subscription notice it
            held = await loader.get(project_id)
            assert held is not None
            assert held.version == 1
            # A process starting now gets the config from the store.
            fresh = await ConfigLoader(other, config_store).get(project_id)
            assert fresh is not None
            assert fresh.version == 1

            own_redis.start()  # empty: no persistence
            # The loader notices Redis is back and refills it from the store.
            started = time.perf_counter()
            while await _shared_version(other, project_id) != b"1":
                assert time.perf_counter() - started < ARRIVAL_BOUND_S
                await asyncio.sleep(0.05)
            await config_store.insert_pipeline(pipeline_document(project_id))
            started = time.perf_counter()
            await deployer.deploy(project_id, "alice")
            await eventually(lambda: held_version(loader, project_id) == 2)
            took_ms = (time.perf_counter() - started) * 1000
            print(f"\nafter a Redis restart, deploy → live in {took_ms:.0f} ms")

    async def test_with_redis_and_the_store_down_the_held_config_is_served(
        self, config_store, own_redis: OwnRedis, own_cache: Cache, project_id
    ):
        await add_draft(config_store, project_id)
        await DeploymentService(config_store, own_cache).deploy(project_id, "alice")
        async with running(ConfigLoader(own_cache, config_store)) as loader:
            assert await loader.get(project_id) is not None
            own_redis.kill()
            await config_store.close()
            await asyncio.sleep(1.2)  # several polls with both backends down
            held = await loader.get(project_id)
            assert held is not None
            assert held.version == 1
            assert loader.peek(project_id) is held
            with pytest.raises(ConfigUnavailable):
                await loader.get(project_id + "_other")

    async def test_with_redis_unreachable_a_deploy_seen_in_the_store_goes_live(
        self, config_store, cache, own_redis: OwnRedis, own_cache: Cache, project_id
    ):
        # The loader's Redis is down while the deployer reaches another one (a partition):
        # the loader checks the store instead.
        await add_draft(config_store, project_id)
        deployer = DeploymentService(config_store, cache)
        await deployer.deploy(project_id, "alice")
        loader = ConfigLoader(own_cache, config_store, store_poll_interval_s=0.2)
        async with running(loader):
            assert await loaded_version(loader, project_id) == 1
            own_redis.kill()
            await config_store.insert_pipeline(pipeline_document(project_id))
            await deployer.deploy(project_id, "alice")
            await eventually(lambda: held_version(loader, project_id) == 2)


async def _shared_version(cache: Cache, project_id: str) -> bytes | None:
    try:
        return await cache.get(version_key(project_id))
    except CacheUnavailable:
        return None
