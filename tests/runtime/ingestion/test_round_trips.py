"""Round trips per accepted request, counted at the real clients (redis-py's
`execute_command`, aiokafka's `AIOKafkaClient.send`) while requests go one after the
other to the real servers: what the README states per event.

Requests sent one at a time, each confirm sent before the next request, share nothing;
concurrent requests share the same calls (coalesced admissions, with the confirms queued
before them riding along, and the producer's linger), so these are the most a request
costs.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aioredis
from aiokafka.client import AIOKafkaClient

from app.core.settings import BackendSettings
from app.db.cache import Admission, ClaimState, Verdict
from app.db.redis_cache import RedisCache
from runtime.ingestion.claims import Claims
from runtime.ingestion.metrics import IngestionMetrics
from tests.conftest import REDIS_URL, unique
from tests.runtime.ingestion.conftest import Pipeline
from tests.runtime.ingestion.helpers import event

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.mongodb]

REQUESTS = 5
# Reads of the copies held in process (deployed config, webhook secrets), refreshed every
# second or so whatever the traffic, and the idle subscriptions' PINGs: not per event.
PERIODIC = ("dps:config:", "dps:config-version:", "dps:secrets:")


class Sent:
    """Commands and Kafka requests sent while counting."""

    def __init__(self) -> None:
        self.redis: list[tuple[Any, ...]] = []
        self.kafka: list[str] = []

    def per_event(self) -> list[str]:
        """The Redis commands that are not periodic reads of held copies."""
        return [
            str(args[0])
            for args in self.redis
            if args[0] != "PING" and not (args[0] == "GET" and str(args[1]).startswith(PERIODIC))
        ]

    def produce_requests(self) -> int:
        return sum(name.startswith("ProduceRequest") for name in self.kafka)


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> Sent:
    counted = Sent()
    real_execute = aioredis.Redis.execute_command
    real_send = AIOKafkaClient.send

    async def execute_command(self: aioredis.Redis, *args: Any, **options: Any) -> Any:
        counted.redis.append(args)
        return await real_execute(self, *args, **options)

    async def send(self: AIOKafkaClient, node_id: int, request: Any, **kw: Any) -> Any:
        counted.kafka.append(type(request).__name__)
        return await real_send(self, node_id, request, **kw)

    monkeypatch.setattr(aioredis.Redis, "execute_command", execute_command)
    monkeypatch.setattr(AIOKafkaClient, "send", send)
    return counted


async def warm(pipeline: Pipeline) -> None:
    """Loads the scripts into Redis and the producer's metadata, so only steady-state
    calls are counted."""
    assert (await pipeline.post(event())).status_code == 202
    assert (await pipeline.post({"events": [event()]}, batch=True)).status_code == 202
    await pipeline.ingest.confirms_sent()


async def one_at_a_time(pipeline: Pipeline, body: dict[str, Any], **post: Any) -> Any:
    """Posts `body` and waits for its confirm to be sent (it goes after the answer)."""
    response = await pipeline.post(body, **post)
    await pipeline.ingest.confirms_sent()
    return response


async def test_a_single_event_costs_two_redis_round_trips_and_one_produce(
    pipeline: Pipeline, sent: Sent
) -> None:
    await warm(pipeline)
    sent.redis.clear()
    sent.kafka.clear()
    for _ in range(REQUESTS):
        assert (await one_at_a_time(pipeline, event())).status_code == 202
    # Per event: the admission (replay claim, dedup claim, rate limit) and the confirm.
    assert sent.per_event() == ["EVALSHA"] * (2 * REQUESTS)
    assert sent.produce_requests() == REQUESTS


async def test_a_duplicate_costs_two_redis_round_trips_and_no_produce(
    pipeline: Pipeline, sent: Sent
) -> None:
    payload = event()
    assert (await pipeline.post(payload)).status_code == 202
    await warm(pipeline)
    sent.redis.clear()
    sent.kafka.clear()
    for _ in range(REQUESTS):
        assert (await one_at_a_time(pipeline, payload)).status_code == 200
    assert sent.per_event() == ["EVALSHA"] * (2 * REQUESTS)
    assert sent.produce_requests() == 0


async def test_a_batch_costs_three_redis_round_trips_whatever_its_size(
    pipeline: Pipeline, sent: Sent
) -> None:
    await warm(pipeline)
    sent.redis.clear()
    sent.kafka.clear()
    for size in (1, 50, 500):
        batch = {"events": [event() for _ in range(size)]}
        response = await one_at_a_time(pipeline, batch, batch=True)
        assert response.json()["accepted"] == size, response.text
    # Per batch: the admission (replay claim, rate limit), the dedup claims, the confirm.
    assert sent.per_event() == ["EVALSHA"] * 9
    assert sent.produce_requests() >= 3


async def test_a_refused_request_costs_one_redis_round_trip(pipeline: Pipeline, sent: Sent) -> None:
    payload = event()
    assert (await pipeline.post(payload, webhook_id="msg_rt")).status_code == 202
    await warm(pipeline)
    sent.redis.clear()
    sent.kafka.clear()
    replay = await one_at_a_time(pipeline, payload, webhook_id="msg_rt")
    assert replay.status_code == 409, replay.text
    # Refused by the admission: nothing was claimed, so nothing is released or confirmed.
    assert sent.per_event() == ["EVALSHA"]
    assert sent.produce_requests() == 0


async def test_a_confirm_rides_on_the_next_admission_which_sees_its_keys_done(
    sent: Sent,
) -> None:
    cache = RedisCache(BackendSettings(redis_url=REDIS_URL))
    await cache.initialize()
    try:
        claims = Claims(
            cache, IngestionMetrics(), pending_ttl_s=60, dedup_ttl_s=60, replay_ttl_s=60
        )
        key = unique("dps:dedup:rides:")
        assert await cache.claim_many([key], 60) == [ClaimState.CLAIMED]  # being produced
        await claims.admit(Admission(unique("dps:wh:warm:")))  # loads the script
        sent.redis.clear()
        claims.confirm({key: 60})  # produced: queued, not sent
        admitted = await claims.admit(Admission(unique("dps:wh:rides:"), (key,), exclusive=True))
        # One call, the confirm first: the exclusive admission finds the key done, where
        # a pending one would have refused it as in flight.
        assert sent.per_event() == ["EVALSHA"]
        assert admitted.verdict is Verdict.ADMITTED
        assert admitted.claims == (ClaimState.DONE,)
        assert await cache.get(key) == b"done"
    finally:
        await cache.close()
