"""Backend fixtures for the whole suite (registered by `pytest_plugins` in tests/conftest.py):
both config stores, the shared test Redis, a private Redis a test may kill, a project id.

Every config store test runs against SQLite and MongoDB (FerretDB). The MongoDB store gets
a database of its own per test, dropped afterwards; the SQLite store a file in the test's
temporary directory.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from pymongo import AsyncMongoClient

from app.core.settings import BackendSettings
from app.db.config_store import ConfigStore
from app.db.factory import make_config_store
from app.db.redis_cache import RedisCache
from tests.conftest import unique
from tests.support.own_redis import OwnRedis


async def drop_database(settings: BackendSettings) -> None:
    """Drops the test's own MongoDB database (`settings.mongodb_database`)."""
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
async def config_backends(
    request: pytest.FixtureRequest, backend_settings: BackendSettings
) -> AsyncIterator[BackendSettings]:
    """`backend_settings` on each config store kind; a MongoDB database is dropped after
    the test (and after every fixture built on this one has closed)."""
    backends = backend_settings.model_copy(update={"config_store": request.param})
    try:
        yield backends
    finally:
        if backends.config_store == "mongodb":
            await drop_database(backends)


@pytest.fixture
async def config_store(config_backends: BackendSettings) -> AsyncIterator[ConfigStore]:
    """An initialised, empty config store of each kind (SQLite, FerretDB)."""
    store = make_config_store(config_backends)
    await store.initialize()
    try:
        yield store
    finally:
        await store.close()


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
    """A redis-server of the test's own, which the test may kill and restart."""
    server = OwnRedis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
async def own_cache(own_redis: OwnRedis) -> AsyncIterator[RedisCache]:
    """A RedisCache on `own_redis`."""
    impl = RedisCache(BackendSettings(redis_url=own_redis.url))
    await impl.initialize()
    try:
        yield impl
    finally:
        await impl.close()


@pytest.fixture
def project_id() -> str:
    return unique("proj")
