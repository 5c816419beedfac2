"""`Cache.add_many_if_absent` (added for batch dedup) on both caches: the same answers as
one add_if_absent per key, in order."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from app.core.settings import BackendSettings
from app.db.cache import Cache
from app.db.memory_cache import MemoryCache
from app.db.redis_cache import RedisCache
from tests.conftest import unique


@pytest.fixture(
    params=[
        pytest.param("redis", id="redis", marks=pytest.mark.redis),
        pytest.param("memory", id="memory"),
    ]
)
async def cache(
    request: pytest.FixtureRequest, backend_settings: BackendSettings
) -> AsyncIterator[Cache]:
    impl: Cache = RedisCache(backend_settings) if request.param == "redis" else MemoryCache()
    await impl.initialize()
    try:
        yield impl
    finally:
        await impl.close()


async def test_claims_only_the_keys_that_were_absent_in_order(cache: Cache) -> None:
    a, b, c = (unique("claim") for _ in range(3))
    assert await cache.add_if_absent(b, 60)
    assert await cache.add_many_if_absent([a, b, c], 60) == [True, False, True]
    assert await cache.add_many_if_absent([c, a], 60) == [False, False]


async def test_released_key_can_be_claimed_again(cache: Cache) -> None:
    key = unique("claim")
    assert await cache.add_many_if_absent([key], 60) == [True]
    await cache.delete(key)
    assert await cache.add_many_if_absent([key], 60) == [True]


async def test_no_keys_claims_nothing(cache: Cache) -> None:
    assert await cache.add_many_if_absent([], 60) == []
