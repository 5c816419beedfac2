"""What the fault cases share: one platform (the four processes) on a Kafka and a Redis of
the package's own, which the cases stop, kill and freeze, and the shared FerretDB (a case
that stops the config store brings its own); the shared servers' addresses; and a helper
that waits for a condition with a bound (a hang becomes a failure; nothing is timed).

The platform is started once for the package (about half a minute on a busy machine).
Each case restores what it broke before it ends (a killed process or a stopped server is
started again), so the next case finds every process and server up.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest

from tests.conftest import KAFKA_BOOTSTRAP, MONGODB_URL, REDIS_URL
from tests.faults.platform import ProcessPlatform, Servers
from tests.runtime.ingestion.own_kafka import OwnKafka
from tests.support.own_redis import OwnRedis

# The shortest the settings allow: a produce the broker does not acknowledge is abandoned
# (503) after 2 s, and a claim left pending (a killed ingestion) blocks its retries (409
# EventInFlight) for 12 s at most (produce timeout + 10 s).
SHORT_TIMEOUTS = {"INGEST_PRODUCE_TIMEOUT_SECONDS": "2", "INGEST_CLAIM_TTL_SECONDS": "12"}


def shared_servers(**private: str) -> Servers:
    """The servers of scripts/servers.sh, with `private` ones (that the case stops) instead:
    `kafka_bootstrap=`, `redis_url=`, `mongodb_url=`."""
    servers = {
        "kafka_bootstrap": KAFKA_BOOTSTRAP,
        "redis_url": REDIS_URL,
        "mongodb_url": MONGODB_URL,
        **private,
    }
    return Servers(**servers)


async def until(
    check: Callable[[], bool | Awaitable[bool]], what: str, bound_s: float = 90
) -> None:
    """Returns once `check()` is true; fails with `what` after `bound_s`."""
    try:
        async with asyncio.timeout(bound_s):
            while True:
                result = check()
                if result if isinstance(result, bool) else await result:
                    return
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"not within {bound_s:g} s: {what}") from None


@pytest.fixture(scope="package")
async def fault_kafka(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[OwnKafka]:
    """The platform's broker, of the package's own: cases stop and freeze it."""
    kafka = OwnKafka(tmp_path_factory.mktemp("kafka"))
    await asyncio.to_thread(kafka.start)
    try:
        yield kafka
    finally:
        await asyncio.to_thread(kafka.stop)


@pytest.fixture(scope="package")
def fault_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnRedis]:
    """The platform's Redis (cache and online store), of the package's own: cases kill and
    freeze it. Persistent (append-only file, fsync always): what comes back after a kill
    is what was written; without it a restart loses the online store, which no retry can
    bring back (README, "Online store and Redis durability")."""
    server = OwnRedis(tmp_path_factory.mktemp("redis"), persistent=True)
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture(scope="package")
async def package_platform(
    tmp_path_factory: pytest.TempPathFactory, fault_kafka: OwnKafka, fault_redis: OwnRedis
) -> AsyncIterator[ProcessPlatform]:
    running = ProcessPlatform(
        tmp_path_factory.mktemp("platform"),
        shared_servers(kafka_bootstrap=fault_kafka.bootstrap, redis_url=fault_redis.url),
        **SHORT_TIMEOUTS,
    )
    try:
        await running.start()
        yield running
    finally:
        await running.stop()


@pytest.fixture
async def platform(package_platform: ProcessPlatform) -> ProcessPlatform:
    """The package's platform with every process up: one that an earlier case left dead
    (a failed case, a compute it killed on purpose) is started again first, so a case
    never inherits another's damage."""
    await package_platform.ensure_up()
    return package_platform
