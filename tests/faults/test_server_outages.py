"""A server stopped mid-stream and started again, while a storefront keeps sending and
retrying each event with its event id: the Kafka broker, Redis (cache and online store).
Each case runs its OWN server of that kind (never the shared ones of scripts/servers.sh)
and ends with every served feature equal to the oracle over the acknowledged events.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.faults.conftest import shared_servers, until
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

# Kept short through the settings: a produce the broker does not acknowledge is abandoned
# (503) after 2 s, and its claim lasts the shortest the settings allow.
SHORT_TIMEOUTS = {"INGEST_PRODUCE_TIMEOUT_SECONDS": "2", "INGEST_CLAIM_TTL_SECONDS": "12"}
# How many refused tries make the broker outage "seen" by the storefront before it returns.
REFUSALS_SEEN = 20
# How long Redis stays away. Ingestion may go on without it (it is a cache, dedup and rate
# limits); compute cannot store, so the stream piles up behind it meanwhile.
REDIS_OUTAGE_S = 5.0
BROKER_STALL_S = 4.0


def now_ms() -> int:
    return int(time.time() * 1000)


def progress(sender: RetryingSender, events: int) -> Callable[[], bool]:
    """A check: `events` more events acknowledged than when it was made."""
    target = len(sender.acknowledged) + events
    return lambda: len(sender.acknowledged) >= target


def refused(sender: RetryingSender, before: int) -> bool:
    return sender.retries_seen() >= before + REFUSALS_SEEN


async def test_kafka_broker_stopped_and_restarted_mid_stream_counts_each_event_once(
    tmp_path: Path,
) -> None:
    (tmp_path / "kafka").mkdir()
    kafka = OwnKafka(tmp_path / "kafka")
    await asyncio.to_thread(kafka.start)
    platform = ProcessPlatform(
        tmp_path / "platform", shared_servers(kafka_bootstrap=kafka.bootstrap), **SHORT_TIMEOUTS
    )
    try:
        await platform.start()
        tenant = await platform.tenant()
        await platform.wait_until_ready(tenant)
        events = make_events("a", 6000, users=20, now_ms=now_ms())
        sender = platform.sender(tenant)
        sending = asyncio.create_task(sender.send_all(events, concurrency=4, pause_s=0.02))
        await until(lambda: len(sender.acknowledged) >= 80, "stream before the outage")

        await asyncio.to_thread(kafka.stop)
        before = sender.retries_seen()
        await until(lambda: refused(sender, before), "503s during the outage")
        await asyncio.to_thread(kafka.start)
        await until(progress(sender, 80), "stream after the outage")
        # A stall shorter than the producer's request timeout (5 s) but longer than the
        # produce timeout (2 s): ingestion answers 503 and releases the claims, the client
        # resends, and the producer still delivers the records it held once the broker
        # answers again: the same event ids in the log twice or more.
        kafka.pause()
        try:
            await asyncio.sleep(BROKER_STALL_S)
        finally:
            kafka.resume()
        await until(progress(sender, 80), "stream after the stall")
        sender.stop()
        await sending

        ids = Counter(m.event_id for m in await read_topic(kafka.bootstrap, platform.topic))
        copies = sum(n - 1 for n in ids.values())
        print(f"\n[faults] case a answers: {dict(sender.answers)}; copies on topic: {copies}")
        await platform.converge("a", tenant, sender.accepted(events))
    finally:
        await platform.stop()
        await asyncio.to_thread(kafka.stop)


async def test_redis_stopped_and_restarted_mid_stream_ends_at_the_oracle(tmp_path: Path) -> None:
    # Persistent (append-only file, fsync always): what comes back is what was written, as
    # with the AOF settings the README gives for production. Without it a restart loses
    # the online store, and no retry can bring that back.
    (tmp_path / "redis").mkdir()
    redis = OwnRedis(tmp_path / "redis", persistent=True)
    redis.start()
    platform = ProcessPlatform(
        tmp_path / "platform", shared_servers(redis_url=redis.url), **SHORT_TIMEOUTS
    )
    try:
        await platform.start()
        tenant = await platform.tenant()
        await platform.wait_until_ready(tenant)
        events = make_events("e", 6000, users=20, now_ms=now_ms())
        sender = platform.sender(tenant)
        sending = asyncio.create_task(sender.send_all(events, concurrency=4, pause_s=0.02))
        await until(lambda: len(sender.acknowledged) >= 80, "stream before the outage")

        redis.kill()
        await asyncio.sleep(REDIS_OUTAGE_S)
        redis.start()  # same port, same data directory
        await until(progress(sender, 80), "stream after the outage")
        sender.stop()
        await sending

        print(f"\n[faults] case e answers: {dict(sender.answers)}")
        await platform.converge("e", tenant, sender.accepted(events))
    finally:
        await platform.stop()
        redis.kill()
