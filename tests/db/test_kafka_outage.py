"""The Kafka producer with every broker stopped: a produce fails at once (connection
refused) instead of holding the records until its deadline, and works again by itself
once the broker is back. Runs its OWN Kafka, stopped by pid; the shared one is never
touched."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app.core.settings import BackendSettings
from app.db.event_log import EventLogUnavailable
from app.db.kafka import KafkaEventProducer
from tests.conftest import unique
from tests.runtime.ingestion.helpers import read_records
from tests.runtime.ingestion.own_kafka import OwnKafka

pytestmark = [pytest.mark.slow, pytest.mark.kafka]

# Not a performance figure: the produce deadline is 10 s, a refused connection takes
# milliseconds; this tells "failed fast" from "waited for the deadline".
FAILS_WITHIN_S = 3.0


@pytest.fixture
async def own_kafka(tmp_path: Path) -> AsyncIterator[OwnKafka]:
    kafka = OwnKafka(tmp_path)
    await asyncio.to_thread(kafka.start)
    try:
        yield kafka
    finally:
        await asyncio.to_thread(kafka.stop)


async def test_stopped_cluster_fails_the_produce_at_once_and_heals(own_kafka: OwnKafka) -> None:
    settings = BackendSettings(kafka_bootstrap=own_kafka.bootstrap, kafka_topic=unique("ev"))
    producer = KafkaEventProducer(settings)
    await producer.start()
    try:
        await producer.produce_many([(b"k", b"before")])
        await asyncio.to_thread(own_kafka.stop)

        started = time.monotonic()
        with pytest.raises(EventLogUnavailable):
            await producer.produce_many([(b"k", b"during")])
        assert time.monotonic() - started < FAILS_WITHIN_S

        await asyncio.to_thread(own_kafka.start)
        deadline = time.monotonic() + 60
        while True:  # the client reconnects on its own; retry like ingestion's callers
            try:
                await producer.produce_many([(b"k", b"after")])
                break
            except EventLogUnavailable:
                assert time.monotonic() < deadline, "no produce within 60 s of the restart"
                await asyncio.sleep(0.5)
    finally:
        await producer.stop()
    values = [value for _, value in await read_records(own_kafka.bootstrap, settings.kafka_topic)]
    # The refused record was never handed to the producer: it cannot arrive later.
    assert values == [b"before", b"after"]
