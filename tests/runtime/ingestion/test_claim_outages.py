"""Claims when things fail together: nothing acknowledged is lost, nothing lost is
acknowledged, and the one price (a duplicate record) is paid only where documented.

Each test runs its OWN Kafka (own_kafka.py), stopped or paused (SIGSTOP) while a request
is producing, and, where Redis must fail too, its OWN persistent redis-server (append-only
file: what it held survives the kill, like a production Redis that went away and came
back). The shared servers are never touched. Claims last 22 s here (produce timeout 12 s).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from app.core.settings import IngestionSettings
from app.schemas.event import EventMessage
from runtime.ingestion.claims import dedup_key, replay_key
from runtime.ingestion.ratelimit import window_key
from tests.conftest import unique
from tests.runtime.ingestion.conftest import IngestApp, Pipeline, deploy_pipeline, running
from tests.runtime.ingestion.conftest import ingestion_settings as base_settings
from tests.runtime.ingestion.helpers import event, read_topic
from tests.runtime.ingestion.own_kafka import OwnKafka
from tests.support.own_redis import OwnRedis

pytestmark = [pytest.mark.slow, pytest.mark.kafka, pytest.mark.redis, pytest.mark.mongodb]

CLAIM_TTL_S = 22
# Upper bounds so that a hang fails the test instead of blocking the suite (not timings).
STEP_BOUND_S = 30.0
RECOVERY_BOUND_S = 150.0


@pytest.fixture
async def own_kafka(tmp_path: Path) -> AsyncIterator[OwnKafka]:
    (tmp_path / "kafka").mkdir()
    kafka = OwnKafka(tmp_path / "kafka")
    await asyncio.to_thread(kafka.start)
    try:
        yield kafka
    finally:
        await asyncio.to_thread(kafka.stop)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    (tmp_path / "redis").mkdir()
    redis = OwnRedis(tmp_path / "redis", persistent=True)
    redis.start()
    try:
        yield redis
    finally:
        redis.kill()


def settings_for(kafka: OwnKafka, redis_url: str | None = None) -> IngestionSettings:
    settings = base_settings(claim_ttl_seconds=CLAIM_TTL_S, produce_timeout_seconds=12)
    settings.backends.kafka_bootstrap = kafka.bootstrap
    if redis_url is not None:
        settings.backends.redis_url = redis_url
    return settings


async def eventually(check: Callable[[], Awaitable[bool]]) -> None:
    """Returns once `check()` is true (polled every 10 ms)."""
    async with asyncio.timeout(STEP_BOUND_S):
        while True:
            if await check():
                return
            await asyncio.sleep(0.01)


async def wait_for_key(redis_url: str, pattern: str) -> None:
    """Returns once a key matching `pattern` exists."""
    client = aioredis.from_url(redis_url)

    async def exists() -> bool:
        return bool([key async for key in client.scan_iter(match=pattern)])

    try:
        await eventually(exists)
    finally:
        await client.aclose()


async def rate_limit_charged(redis_url: str, project_id: str) -> None:
    """Returns once the project's rate limit was charged: the request was admitted (its
    claims and its charge are one atomic step), the last Redis step before it produces."""
    await wait_for_key(redis_url, window_key("project", project_id, ""))


async def claim_value(pipe: Pipeline, key: str) -> bytes | None:
    cache = pipe.ingest.resources.cache
    assert cache is not None
    return await cache.get(key)


async def claimed(pipe: Pipeline, event_id: str) -> None:
    """Returns once some request holds the event's dedup claim."""

    async def held() -> bool:
        return await claim_value(pipe, dedup_key(pipe.project_id, event_id)) is not None

    await eventually(held)


async def retrying(
    pipe: Pipeline, payload: dict[str, Any], *, while_in_flight: bool, **kwargs: Any
) -> httpx.Response:
    """Retries like a storefront while the answer is 503 (a backend still coming back:
    after a restart, each stale pooled Redis connection fails once) and, with
    `while_in_flight`, 409 EventInFlight; returns the first other answer."""
    deadline = time.monotonic() + RECOVERY_BOUND_S
    while True:
        response = await pipe.post(payload, **kwargs)
        in_flight = response.status_code == 409 and response.json()["error"] == "EventInFlight"
        if not (in_flight and while_in_flight) and response.status_code != 503:
            return response
        assert time.monotonic() < deadline, f"still {response.status_code}: {response.text}"
        await asyncio.sleep(1)


def assert_in_flight(response: httpx.Response) -> None:
    assert response.status_code == 409, response.text
    assert response.json()["error"] == "EventInFlight"
    assert int(response.headers["retry-after"]) > 0


async def counter(pipe: Pipeline, name: str) -> float:
    text = (await pipe.ingest.client.get("/metrics")).text
    [value] = [float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ")]
    return value


async def on_topic(
    kafka: OwnKafka, settings: IngestionSettings, event_id: str
) -> list[EventMessage]:
    messages = await read_topic(kafka.bootstrap, settings.backends.kafka_topic)
    return [m for m in messages if m.event_id == event_id]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def test_kafka_and_redis_down_during_the_produce_lose_nothing(
    own_kafka: OwnKafka, own_redis: OwnRedis
) -> None:
    """The loss window of single-phase claims: the produce fails, the release fails, and
    the 24 h claim made the retry a "duplicate" of an event that was never produced."""
    settings = settings_for(own_kafka, own_redis.url)
    async for app, client in running(settings):
        pipe = await deploy_pipeline(IngestApp(app, client, settings, []), unique("double"))
        payload = event()
        keys = [
            replay_key(pipe.project_id, "msg_double"),
            dedup_key(pipe.project_id, payload["event_id"]),
        ]
        # Frozen, not stopped: a stopped broker is refused at once (the producer sees no
        # live broker), while a frozen one holds the request until the produce deadline,
        # the window in which Redis dies here.
        own_kafka.pause()
        first = asyncio.create_task(pipe.post(payload, webhook_id="msg_double"))
        await rate_limit_charged(own_redis.url, pipe.project_id)
        own_redis.kill()  # while the request waits on the stopped broker
        failed = await first
        assert failed.status_code == 503, failed.text
        assert failed.json()["error"] == "EventLogUnavailable"

        own_redis.start()
        # The scenario happened: the release failed, both claims are still held...
        assert [await claim_value(pipe, key) for key in keys] == [b"pending", b"pending"]
        # ...and while they are, retries are refused as in flight, never acknowledged.
        assert_in_flight(
            await retrying(pipe, payload, webhook_id="msg_double", while_in_flight=False)
        )
        assert_in_flight(await retrying(pipe, payload, while_in_flight=False))

        own_kafka.resume()
        retried_at = now_ms()
        retry = await retrying(pipe, payload, webhook_id="msg_double", while_in_flight=True)
        assert retry.status_code == 202, retry.text
        assert retry.json() == {
            "accepted": 1,
            "duplicates": 0,
            "late": 0,
            "event_id": payload["event_id"],
        }
        # Confirmed now: a later copy is acknowledged as a duplicate and not produced.
        duplicate_at = now_ms()
        duplicate = await pipe.post(payload)
        assert duplicate.status_code == 200, duplicate.text
        assert duplicate.json()["duplicates"] == 1
        assert await counter(pipe, "ingest_claims_unreleased_total") == 2

    received = [m.received_at_ms for m in await on_topic(own_kafka, settings, payload["event_id"])]
    # The retry itself was produced (the failed attempt's record may be there too: the
    # client kept it and delivered it once the broker was back, after the 503 ("some may
    # still have been stored"): a duplicate record, never a loss), and the confirmed
    # duplicate was not.
    assert any(t >= retried_at for t in received), received
    assert all(t < duplicate_at for t in received), received


async def test_request_for_an_event_in_flight_is_409_until_it_is_produced(
    own_kafka: OwnKafka,
) -> None:
    settings = settings_for(own_kafka)
    async for app, client in running(settings):
        pipe = await deploy_pipeline(IngestApp(app, client, settings, []), unique("inflight"))
        payload, other = event(), event()
        own_kafka.pause()
        try:
            first = asyncio.create_task(pipe.post(payload, webhook_id="msg_first"))
            await claimed(pipe, payload["event_id"])
            # The same event from another delivery, and the same delivery again (a
            # sender that timed out): neither may be acknowledged yet.
            assert_in_flight(await pipe.post(payload))
            assert_in_flight(await pipe.post(payload, webhook_id="msg_first"))
            batch = asyncio.create_task(pipe.post({"events": [payload, other]}, batch=True))
            await claimed(pipe, other["event_id"])
        finally:
            own_kafka.resume()

        produced = await first
        assert produced.status_code == 202, produced.text
        batch_response = await batch
        assert batch_response.status_code == 202, batch_response.text
        body = batch_response.json()
        assert (body["accepted"], body["duplicates"]) == (1, 0)
        assert [(r["index"], r["error"]) for r in body["rejected"]] == [(0, "EventInFlight")]
        assert int(batch_response.headers["retry-after"]) > 0
        # Once produced, the in-flight event's retries are duplicates (and its delivery a replay).
        retry = await pipe.post(payload)
        assert (retry.status_code, retry.json()["duplicates"]) == (200, 1)
        replay = await pipe.post(payload, webhook_id="msg_first")
        assert (replay.status_code, replay.json()["error"]) == (409, "ReplayedWebhook")

    assert len(await on_topic(own_kafka, settings, payload["event_id"])) == 1
    assert len(await on_topic(own_kafka, settings, other["event_id"])) == 1


async def test_unconfirmed_claims_still_acknowledge_and_a_late_retry_is_produced_again(
    own_kafka: OwnKafka, own_redis: OwnRedis
) -> None:
    """Redis goes away after the claim, the broker acknowledges: the event is in the log,
    so the 2xx is right; the claims stay pending and expire, and a retry after that is
    produced again. A duplicate record (consumers drop it by event id) is the documented
    price; a lost event would not be."""
    settings = settings_for(own_kafka, own_redis.url)
    async for app, client in running(settings):
        pipe = await deploy_pipeline(IngestApp(app, client, settings, []), unique("unconfirmed"))
        payload = event()
        own_kafka.pause()
        try:
            first = asyncio.create_task(pipe.post(payload))
            await rate_limit_charged(own_redis.url, pipe.project_id)
            own_redis.kill()  # the produce waits on the paused broker
        finally:
            own_kafka.resume()
        produced = await first
        assert produced.status_code == 202, produced.text
        assert produced.json()["accepted"] == 1
        # The confirm is sent after the answer, and fails.
        await pipe.ingest.confirms_sent()
        assert await counter(pipe, "ingest_claims_unconfirmed_total") == 2

        own_redis.start()
        key = dedup_key(pipe.project_id, payload["event_id"])
        assert await claim_value(pipe, key) == b"pending"
        assert_in_flight(await retrying(pipe, payload, while_in_flight=False))
        again = await retrying(pipe, payload, while_in_flight=True)
        assert again.status_code == 202, again.text
        assert again.json()["accepted"] == 1

    assert len(await on_topic(own_kafka, settings, payload["event_id"])) == 2
