"""A server stopped mid-stream and started again, while a storefront keeps sending and
resending each event with its event id: the Kafka broker (then stalled), Redis (cache and
online store). The servers are the package's own (conftest.py), never the shared ones of
scripts/servers.sh. Each case ends with every served feature equal to the oracle over the
acknowledged events, and leaves the server running for the next.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable

import pytest

from tests.faults.conftest import until
from tests.faults.platform import ProcessPlatform
from tests.faults.scenario import make_events
from tests.faults.sender import RetryingSender
from tests.runtime.ingestion.helpers import read_topic
from tests.runtime.ingestion.own_kafka import OwnKafka
from tests.support.own_redis import OwnRedis

pytestmark = [
    pytest.mark.faults,
    pytest.mark.slow,
    pytest.mark.kafka,
    pytest.mark.redis,
    pytest.mark.mongodb,
]

# How many refused tries make the broker outage "seen" by the storefront before it returns.
REFUSALS_SEEN = 20
# Longer than the produce timeout (2 s), shorter than the producer's request timeout (5 s).
BROKER_STALL_S = 4.0
# How long Redis stays away; compute cannot store meanwhile, and the stream piles up.
REDIS_OUTAGE_S = 5.0
# Events acknowledged between one step of a case and the next.
STEP = 80


def now_ms() -> int:
    return int(time.time() * 1000)


def progress(sender: RetryingSender, events: int) -> Callable[[], bool]:
    """A check: `events` more events acknowledged than when it was made."""
    target = len(sender.acknowledged) + events
    return lambda: len(sender.acknowledged) >= target


async def test_kafka_broker_stopped_and_restarted_mid_stream_counts_each_event_once(
    platform: ProcessPlatform, fault_kafka: OwnKafka
) -> None:
    tenant = await platform.tenant()
    await platform.wait_until_ready(tenant)
    events = make_events("a", 6000, users=20, now_ms=now_ms())
    sender = platform.sender(tenant)
    sending = asyncio.create_task(sender.send_all(events, concurrency=4, pause_s=0.02))
    await until(progress(sender, STEP), "stream before the outage")

    await asyncio.to_thread(fault_kafka.stop)
    try:
        before = sender.retries_seen()
        await until(lambda: sender.retries_seen() >= before + REFUSALS_SEEN, "503s meanwhile")
    finally:
        await asyncio.to_thread(fault_kafka.start)
    await until(progress(sender, STEP), "stream after the outage")
    # A stall shorter than the producer's request timeout but longer than the produce
    # timeout: ingestion answers 503 and releases the claims, the client resends, and the
    # producer still delivers the records it held once the broker answers again: the same
    # event ids in the log twice or more.
    fault_kafka.pause()
    try:
        await asyncio.sleep(BROKER_STALL_S)
    finally:
        fault_kafka.resume()
    await until(progress(sender, STEP), "stream after the stall")
    sender.stop()
    await sending

    ids = Counter(
        m.event_id
        for m in await read_topic(fault_kafka.bootstrap, platform.topic)
        if m.project_id == tenant.project_id
    )
    copies = sum(n - 1 for n in ids.values())
    print(f"\n[faults] case a answers: {dict(sender.answers)}; copies on topic: {copies}")
    await platform.converge("a", tenant, sender.accepted(events))


async def test_redis_stopped_and_restarted_mid_stream_ends_at_the_oracle(
    platform: ProcessPlatform, fault_redis: OwnRedis
) -> None:
    tenant = await platform.tenant()
    await platform.wait_until_ready(tenant)
    events = make_events("e", 6000, users=20, now_ms=now_ms())
    sender = platform.sender(tenant)
    sending = asyncio.create_task(sender.send_all(events, concurrency=4, pause_s=0.02))
    await until(progress(sender, STEP), "stream before the outage")

    fault_redis.kill()
    try:
        await asyncio.sleep(REDIS_OUTAGE_S)
    finally:
        fault_redis.start()  # same port, same append-only file
    await until(progress(sender, STEP), "stream after the outage")
    sender.stop()
    await sending

    print(f"\n[faults] case e answers: {dict(sender.answers)}")
    await platform.converge("e", tenant, sender.accepted(events))
