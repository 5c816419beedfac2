"""Processes killed with SIGKILL mid-stream, on the shared Kafka, Redis and FerretDB (no
server is stopped here): ingestion in the middle of batches, one compute three times, one
of two computes in a group. Each case ends with every served feature equal to the oracle
over the events ingestion acknowledged, one per event id.

The four processes are started once for the module; each case has its own project.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from tests.faults.conftest import shared_servers, until
from tests.faults.platform import ProcessPlatform
from tests.faults.scenario import make_events
from tests.faults.sender import RetryingSender
from tests.runtime.ingestion.helpers import read_topic
from tests.support.processes import ServiceProcess

pytestmark = [
    pytest.mark.faults,
    pytest.mark.slow,
    pytest.mark.kafka,
    pytest.mark.redis,
    pytest.mark.mongodb,
]


@pytest.fixture(scope="module")
async def platform(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ProcessPlatform]:
    running = ProcessPlatform(
        tmp_path_factory.mktemp("crashes"),
        shared_servers(),
        # A claim left pending by a killed ingestion blocks its retries (409 EventInFlight)
        # this long at most: the shortest the settings allow (produce timeout + 10 s).
        INGEST_PRODUCE_TIMEOUT_SECONDS="2",
        INGEST_CLAIM_TTL_SECONDS="12",
    )
    try:
        await running.start()
        yield running
    finally:
        await running.stop()


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


def committing(
    platform: ProcessPlatform, compute: ServiceProcess, batches: int
) -> Callable[[], Awaitable[bool]]:
    """A check: this compute process committed at least `batches` since it started."""

    async def check() -> bool:
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


async def test_ingestion_killed_mid_batch_twice_counts_each_retried_event_once(
    platform: ProcessPlatform,
) -> None:
    tenant = await platform.tenant()
    await platform.wait_until_ready(tenant)
    events = make_events("b", 800, users=15, now_ms=now_ms())
    sender = platform.sender(tenant)
    sending = asyncio.create_task(
        sender.send_all(events, concurrency=4, batch_size=25, pause_s=0.05)
    )
    for share in (1 / 3, 2 / 3):
        await until(acknowledged(sender, int(share * len(events))), "progress")
        platform.ingest.kill()  # batches are in flight on all four lanes
        platform.ingest.start()
    await sending

    copies = await copies_on_topic(platform, shared_servers().kafka_bootstrap, tenant.project_id)
    print(f"\n[faults] case b answers: {dict(sender.answers)}; second copies on topic: {copies}")
    assert sender.retries_seen() > 0, "the kills were not seen by the storefront"
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
    acknowledged_at_kill = len(sender.acknowledged)
    await until(acknowledged(sender, acknowledged_at_kill + 200), "stream after the kill")
    sender.stop()
    await sending

    print(f"\n[faults] case d: {len(sender.acknowledged)} events acknowledged")
    await platform.converge("d", tenant, sender.accepted(events))
