"""Processes killed with SIGKILL mid-stream (the servers stay up; case b freezes them for
a moment): ingestion in the middle of batches, one compute three times, one of two
computes in a group. Each case ends with every served feature equal to the oracle over
the events ingestion acknowledged, one per event id.

On the package's platform (conftest.py); each case has its own project.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable

import httpx
import pytest
from redis.asyncio import Redis

from app.db.cache import PENDING
from runtime.ingestion.claims import dedup_key
from tests.faults.conftest import until
from tests.faults.platform import ProcessPlatform
from tests.faults.scenario import make_events
from tests.faults.sender import RetryingSender
from tests.runtime.ingestion.helpers import read_topic
from tests.runtime.ingestion.own_kafka import OwnKafka
from tests.support.own_redis import OwnRedis
from tests.support.processes import ServiceProcess

pytestmark = [
    pytest.mark.faults,
    pytest.mark.slow,
    pytest.mark.kafka,
    pytest.mark.redis,
    pytest.mark.mongodb,
]


# Each freeze stays under both the produce timeout and the cache's read timeout (2 s), so
# that no request gives up (503, or a 2xx without its confirm) before the kill.
FREEZE_S = 1.0
# Kills of ingestion, at most, for one to strand events (it takes one or two).
MAX_KILLS = 4


def now_ms() -> int:
    return int(time.time() * 1000)


async def committed_batches(http: httpx.AsyncClient, compute: ServiceProcess) -> int:
    """Batches this compute process stored and committed since it started (0 while it
    does not answer)."""
    try:
        response = await http.get(f"{compute.url}/consumer")
    except httpx.TransportError:
        return 0
    if response.status_code != 200:
        return 0
    batches: int = response.json()["batches_committed"]
    return batches


async def kill_between_ack_and_confirm(
    platform: ProcessPlatform, kafka: OwnKafka, redis: OwnRedis
) -> None:
    """Kills ingestion (SIGKILL) while batches wait between their Kafka ack and the
    confirm of their claims.

    That window is a millisecond or two; the servers are frozen (SIGSTOP) for well under
    the produce timeout to hold the batches in it: the broker first, so that every batch
    in flight waits on its produce; then Redis, and the broker goes on, so those batches
    get their acks and wait on the confirm (the cache's read timeout is 2 s). Their
    claims stay pending: the storefront's resends get 409 EventInFlight, and once the
    claims expire they are produced again: second copies in the log."""
    assert redis.proc is not None
    kafka.pause()
    try:
        await asyncio.sleep(FREEZE_S)
        os.kill(redis.proc.pid, signal.SIGSTOP)
    finally:
        kafka.resume()
    try:
        await asyncio.sleep(FREEZE_S)
        platform.ingest.kill()
    finally:
        os.kill(redis.proc.pid, signal.SIGCONT)


async def stranded_events(kafka: OwnKafka, redis: OwnRedis, topic: str, project_id: str) -> int:
    """Events in the log whose dedup claim is still pending: acknowledged by Kafka to an
    ingestion that died before confirming them, and bound to be produced again."""
    messages = await read_topic(kafka.bootstrap, topic)
    ids = {m.event_id for m in messages if m.project_id == project_id}
    client = Redis.from_url(redis.url)
    try:
        keys = [dedup_key(project_id, event_id) for event_id in sorted(ids)]
        states = await client.mget(keys) if keys else []
    finally:
        await client.aclose()
    return sum(state == PENDING for state in states)


def committing(
    platform: ProcessPlatform, compute: ServiceProcess, batches: int
) -> Callable[[], Awaitable[bool]]:
    """A check: this compute process committed at least `batches` since it started."""

    async def check() -> bool:
        if not compute.running:  # a crash at start-up fails at once, with its log
            raise AssertionError(f"{compute.name} exited: {compute.log_tail()}")
        return await committed_batches(platform.http, compute) >= batches

    return check


def acknowledged(sender: RetryingSender, events: int) -> Callable[[], bool]:
    """A check: the storefront has at least `events` events acknowledged."""
    return lambda: len(sender.acknowledged) >= events


async def copies_on_topic(platform: ProcessPlatform, bootstrap: str, project_id: str) -> int:
    """How many messages of the project are second (or later) copies of an event id."""
    ids = Counter(
        m.event_id
        for m in await read_topic(bootstrap, platform.topic)
        if m.project_id == project_id
    )
    return sum(n - 1 for n in ids.values())


async def test_ingestion_killed_between_ack_and_confirm_counts_each_resent_event_once(
    platform: ProcessPlatform, fault_kafka: OwnKafka, fault_redis: OwnRedis
) -> None:
    tenant = await platform.tenant()
    await platform.wait_until_ready(tenant)
    events = make_events("b", 800, users=15, now_ms=now_ms())
    sender = platform.sender(tenant)
    sending = asyncio.create_task(
        sender.send_all(events, concurrency=6, batch_size=25, pause_s=0.05)
    )
    stranded = 0
    for _ in range(MAX_KILLS):  # until a kill has left events stranded
        await until(acknowledged(sender, len(sender.acknowledged) + 75), "progress")
        await kill_between_ack_and_confirm(platform, fault_kafka, fault_redis)
        try:
            stranded = await stranded_events(
                fault_kafka, fault_redis, platform.topic, tenant.project_id
            )
        finally:
            platform.ingest.start()
        if stranded:
            break
    assert stranded, f"no kill in {MAX_KILLS} landed between a Kafka ack and its confirm"
    await sending

    copies = await copies_on_topic(platform, fault_kafka.bootstrap, tenant.project_id)
    print(
        f"\n[faults] case b answers: {dict(sender.answers)}; stranded by the kill: {stranded}; "
        f"second copies on topic: {copies}"
    )
    await platform.converge("b", tenant, sender.accepted(events))


async def test_compute_killed_three_times_mid_stream_ends_at_the_oracle(
    platform: ProcessPlatform,
) -> None:
    tenant = await platform.tenant()
    await platform.wait_until_ready(tenant)
    events = make_events("c", 6000, users=20, now_ms=now_ms())
    sender = platform.sender(tenant)
    sending = asyncio.create_task(sender.send_all(events, concurrency=2, pause_s=0.02))
    [compute] = platform.computes
    for _ in range(3):
        # Killed only once it stores batches again: each kill lands in a working consumer.
        await until(committing(platform, compute, 2), "compute committing")
        compute.kill()
        compute.start()
    await until(committing(platform, compute, 1), "restarted compute committing")
    sender.stop()
    await sending

    print(f"\n[faults] case c: 3 kills, {len(sender.acknowledged)} events acknowledged")
    await platform.converge("c", tenant, sender.accepted(events))


async def test_two_computes_in_a_group_one_killed_the_other_takes_its_partitions(
    platform: ProcessPlatform,
) -> None:
    tenant = await platform.tenant()
    await platform.wait_until_ready(tenant)
    second = platform.add_compute()
    second.start()
    await second.wait_healthy(platform.http)
    events = make_events("d", 6000, users=20, now_ms=now_ms())
    sender = platform.sender(tenant)
    sending = asyncio.create_task(sender.send_all(events, concurrency=2, pause_s=0.02))
    first = platform.computes[0]
    # Both members hold partitions and store batches before one of them dies.
    for member in (first, second):
        await until(committing(platform, member, 2), f"{member.name} committing")
    second.kill()
    platform.computes.remove(second)  # gone for good: the next case runs on one compute
    acknowledged_at_kill = len(sender.acknowledged)
    await until(acknowledged(sender, acknowledged_at_kill + 200), "stream after the kill")
    sender.stop()
    await sending

    print(f"\n[faults] case d: {len(sender.acknowledged)} events acknowledged")
    await platform.converge("d", tenant, sender.accepted(events))
