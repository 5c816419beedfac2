"""The broker stops while storefronts keep sending: requests get 503 with Retry-After,
and every event that was acknowledged (2xx) is on the topic once the broker is back.

Runs its OWN Kafka (tests/runtime/ingestion/own_kafka.py): the shared one is never
stopped."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import unique
from tests.runtime.ingestion.conftest import (
    IngestApp,
    Pipeline,
    deploy_pipeline,
    ingestion_settings,
    running,
)
from tests.runtime.ingestion.helpers import event, read_topic
from tests.runtime.ingestion.own_kafka import OwnKafka

pytestmark = [pytest.mark.slow, pytest.mark.kafka, pytest.mark.redis, pytest.mark.mongodb]


@pytest.fixture
async def own_kafka(tmp_path: Path) -> AsyncIterator[OwnKafka]:
    kafka = OwnKafka(tmp_path)
    await asyncio.to_thread(kafka.start)
    try:
        yield kafka
    finally:
        await asyncio.to_thread(kafka.stop)


class Sender:
    """Posts single events in a loop and remembers what each answer said."""

    def __init__(self, pipe: Pipeline) -> None:
        self.pipe = pipe
        self.acknowledged: list[str] = []
        self.unavailable: list[tuple[str, str | None]] = []  # (event id, Retry-After)
        self.other: list[int] = []
        self.stopping = False

    async def run(self) -> None:
        while not self.stopping:
            payload = event(event_id=f"ev-{uuid.uuid4().hex}")
            response = await self.pipe.post(payload)
            if response.status_code == 202:
                self.acknowledged.append(payload["event_id"])
            elif response.status_code == 503:
                assert response.json()["error"] == "EventLogUnavailable", response.text
                self.unavailable.append((payload["event_id"], response.headers.get("retry-after")))
            else:
                self.other.append(response.status_code)
            await asyncio.sleep(0.02)


async def test_broker_stop_gives_503_and_loses_no_acknowledged_event(
    own_kafka: OwnKafka,
) -> None:
    settings = ingestion_settings()
    settings.backends.kafka_bootstrap = own_kafka.bootstrap
    topic = settings.backends.kafka_topic
    async for app, client in running(settings):
        pipe = await deploy_pipeline(IngestApp(app, client, settings, []), unique("outage"))
        senders = [Sender(pipe) for _ in range(3)]
        tasks = [asyncio.create_task(s.run()) for s in senders]
        deadline = time.monotonic() + 60
        while sum(len(s.acknowledged) for s in senders) < 20:
            assert time.monotonic() < deadline, "20 events not acknowledged within 60 s"
            await asyncio.sleep(0.1)

        await asyncio.to_thread(own_kafka.stop)  # mid-stream, senders still running
        deadline = time.monotonic() + 90
        while sum(len(s.unavailable) for s in senders) < 3:
            assert time.monotonic() < deadline, "no 503 within 90 s of the broker stopping"
            await asyncio.sleep(0.2)
        for s in senders:
            s.stopping = True
        await asyncio.gather(*tasks)

        # A refused event must be retryable: its dedup claim was released.
        refused_id = next(u[0] for s in senders for u in s.unavailable)
        await asyncio.to_thread(own_kafka.start)
        deadline = time.monotonic() + 90
        while True:  # the producer reconnects on its own; retry like a storefront
            response = await pipe.post(event(event_id=refused_id))
            if response.status_code != 503:
                break
            assert time.monotonic() < deadline, "producer did not recover within 90 s"
            await asyncio.sleep(1)
        assert response.status_code == 202, response.text

    acknowledged = [e for s in senders for e in s.acknowledged]
    unavailable = [u for s in senders for u in s.unavailable]
    assert all(s.other == [] for s in senders), [s.other for s in senders]
    assert all(retry_after is not None and int(retry_after) > 0 for _, retry_after in unavailable)
    on_topic = {m.event_id for m in await read_topic(own_kafka.bootstrap, topic)}
    missing = [e for e in acknowledged if e not in on_topic]
    assert missing == [], f"{len(missing)} acknowledged events missing of {len(acknowledged)}"
    assert refused_id in on_topic
