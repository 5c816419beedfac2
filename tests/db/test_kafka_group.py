"""Kafka group membership on the real broker: a consumer killed with SIGKILL (no
LeaveGroup) has its partitions taken over by the other member after about the session
timeout, and partitions added to the topic are read after a metadata refresh. The
timings come from the settings (KAFKA_SESSION_TIMEOUT_MS, KAFKA_METADATA_MAX_AGE_MS)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions

from app.core.settings import BackendSettings
from app.db.event_log import EventLogUnavailable
from app.db.kafka import KafkaEventConsumer, ensure_topic
from tests.support.own_ferretdb import REPO

pytestmark = pytest.mark.kafka

PARTITIONS = 4
# Deadlines for the waits, far above what the settings give (takeover ~7 s, new
# partitions ~3 s): they stop a broken test, they do not measure anything.
WAIT_S = 60

# The other member, in a process of its own so that it can really die: it joins the
# group, reads, and prints how many partitions it holds whenever that changes.
_MEMBER = """
import asyncio, os
from app.core.settings import BackendSettings
from app.db.event_log import EventLogUnavailable
from app.db.kafka import KafkaEventConsumer

async def main():
    consumer = KafkaEventConsumer(BackendSettings(), os.environ["KAFKA_CONSUMER_GROUP"])
    held = -1
    while True:
        await consumer.getmany(100, 200)
        try:
            now = len(await consumer.lag())
        except EventLogUnavailable:  # the assignment changed under the call: next round
            continue
        if now != held:
            held = now
            print(held, flush=True)

asyncio.run(main())
"""


@pytest.fixture
def member(backend_settings: BackendSettings) -> Iterator[subprocess.Popen[bytes]]:
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP": backend_settings.kafka_bootstrap,
        "KAFKA_TOPIC": backend_settings.kafka_topic,
        "KAFKA_CONSUMER_GROUP": backend_settings.kafka_consumer_group,
        "KAFKA_PARTITIONS": str(PARTITIONS),
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", _MEMBER], cwd=REPO, env=env, stdout=subprocess.PIPE
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def _held_by(proc: subprocess.Popen[bytes], wanted: int) -> None:
    """Reads the member's output until it holds `wanted` partitions (at most WAIT_S)."""
    assert proc.stdout is not None
    fd, pending = proc.stdout.fileno(), b""
    deadline = time.monotonic() + WAIT_S
    while (remaining := deadline - time.monotonic()) > 0:
        if not select.select([fd], [], [], remaining)[0]:
            break
        chunk = os.read(fd, 4096)  # unbuffered: select sees every byte not yet read
        if not chunk:
            pytest.fail(f"the member exited before holding {wanted} partitions")
        *lines, pending = (pending + chunk).split(b"\n")
        if any(int(line) == wanted for line in lines):
            return
    pytest.fail(f"the member did not hold {wanted} partitions within {WAIT_S} s")


async def _hold(consumer: KafkaEventConsumer, wanted: int) -> float:
    """Polls until `consumer` holds `wanted` partitions; returns the seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < WAIT_S:
        await consumer.getmany(100, 200)
        with contextlib.suppress(EventLogUnavailable):  # the assignment changed meanwhile
            if len(await consumer.lag()) == wanted:
                return time.monotonic() - started
    pytest.fail(f"the consumer did not hold {wanted} partitions within {WAIT_S} s")


async def test_killed_members_partitions_are_taken_over(
    backend_settings: BackendSettings, member: subprocess.Popen[bytes]
) -> None:
    settings = backend_settings.model_copy(update={"kafka_partitions": PARTITIONS})
    await ensure_topic(settings)
    await asyncio.to_thread(_held_by, member, PARTITIONS)
    survivor = KafkaEventConsumer(settings, settings.kafka_consumer_group)
    try:
        await _hold(survivor, PARTITIONS // 2)  # the group split the partitions
        assert member.poll() is None, "the member died before it was killed"
        member.send_signal(signal.SIGKILL)
        took = await _hold(survivor, PARTITIONS)
    finally:
        await survivor.stop()
    print(f"takeover after SIGKILL: {took:.1f} s")
    # About the session timeout: the member's heartbeats stop, the broker expires it.
    assert took < WAIT_S


async def test_partitions_added_to_the_topic_are_read(
    backend_settings: BackendSettings,
) -> None:
    settings = backend_settings.model_copy(
        update={"kafka_partitions": 2, "kafka_metadata_max_age_ms": 2_000}
    )
    await ensure_topic(settings)
    consumer = KafkaEventConsumer(settings, settings.kafka_consumer_group)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    await producer.start()
    try:
        await _hold(consumer, 2)
        await admin.create_partitions({settings.kafka_topic: NewPartitions(total_count=4)})
        took = await _hold(consumer, 4)
        await producer.send_and_wait(settings.kafka_topic, b"new", key=b"k", partition=3)
        records: list[int] = []
        while not records:
            records = [r.partition for r in await consumer.getmany(10, 500)]
        assert records == [3]
    finally:
        await producer.stop()
        await admin.close()
        await consumer.stop()
    print(f"new partitions read after: {took:.1f} s")
