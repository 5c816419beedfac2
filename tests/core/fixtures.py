"""Fixtures shared by tests/core and tests/services (imported by their conftests): both
config stores, the real Redis, a private Redis that tests may kill, a project per test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from pymongo import AsyncMongoClient

from app.core.settings import BackendSettings
from app.db.config_store import ConfigStore
from app.db.mongodb import MongoConfigStore
from app.db.redis_cache import RedisCache
from app.db.sqlite_config import SQLiteConfigStore
from tests.conftest import unique
from tests.core.own_redis import OwnRedis


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
async def config_store(
    request: pytest.FixtureRequest, backend_settings: BackendSettings
) -> AsyncIterator[ConfigStore]:
    """An initialised, empty config store of each kind (SQLite, FerretDB)."""
    store: ConfigStore
    if request.param == "sqlite":
        store = SQLiteConfigStore(backend_settings)
    else:
        store = MongoConfigStore(backend_settings)
    await store.initialize()
    try:
        yield store
    finally:
        await store.close()
        if request.param == "mongodb":
            await _drop_database(backend_settings)


@pytest.fixture
async def cache(backend_settings: BackendSettings) -> AsyncIterator[RedisCache]:
    """The shared test Redis (keys are per project, projects are unique per test)."""
    impl = RedisCache(backend_settings)
    await impl.initialize()
    try:
        yield impl
    finally:
        await impl.close()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
async def own_cache(own_redis: OwnRedis) -> AsyncIterator[RedisCache]:
    impl = RedisCache(BackendSettings(redis_url=own_redis.url))
    await impl.initialize()
    try:
        yield impl
    finally:
        await impl.close()


@pytest.fixture
def project_id() -> str:
    return unique("proj")
