"""Real backends around a ComputeWorker: Kafka topic, Redis cache and config loader,
SQLite config store, an online store; a controllable clock; waiting for catch-up."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient

from app.core.config_loader import ConfigLoader, publish_config
from app.core.settings import BackendSettings
from app.db import factory
from app.db.event_log import EventLogConsumer, EventLogProducer
from app.db.online_store import OnlineStore
from app.schemas.deployment import ConfigSnapshot
from app.schemas.event import record_key
from runtime.compute.metrics import ComputeMetrics
from runtime.compute.worker import ComputeWorker, WorkerOptions
from runtime.compute.writer import FeatureWriter
from tests.runtime.compute.oracle import RawEvent, message

# Turns a hang into a failure; not a timing assertion.
CATCH_UP_BOUND_S = 60.0
OUTCOMES = (
    "compute_events_applied_total",
    "compute_events_duplicate_total",
    "compute_events_late_total",
    "compute_events_future_total",
    "compute_events_no_config_total",
    "compute_events_without_features_total",
    "compute_decode_errors_total",
    "compute_events_parked_total",
)


class Clock:
    """The worker's `now_ms`, set by the test."""

    def __init__(self, now_ms: int) -> None:
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms


def sample(metrics: ComputeMetrics, name: str) -> float:
    """The value of a series, summed over its labels (0 when it has none yet)."""
    return sum(s.value for m in metrics.registry.collect() for s in m.samples if s.name == name)


def processed(metrics: ComputeMetrics) -> int:
    """Records the worker has accounted for, whatever their outcome."""
    return int(sum(sample(metrics, name) for name in OUTCOMES))


class Running:
    """A worker running as a task, with its metrics."""

    def __init__(
        self,
        worker: ComputeWorker,
        metrics: ComputeMetrics,
    ) -> None:
        self.worker = worker
        self.metrics = metrics
        self.task = asyncio.create_task(worker.run())

    async def wait_processed(self, count: int) -> None:
        """Returns once `count` records were accounted for; fails if the worker died
        or did not get there within the bound."""
        async with asyncio.timeout(CATCH_UP_BOUND_S):
            while processed(self.metrics) < count:
                if self.task.done():
                    self.task.result()
                    raise AssertionError("worker stopped before catching up")
                await asyncio.sleep(0.05)

    async def wait_for(self, condition: Callable[[], bool]) -> None:
        """Returns once `condition()` holds; fails if the worker died or the bound passed."""
        async with asyncio.timeout(CATCH_UP_BOUND_S):
            while not condition():
                if self.task.done():
                    self.task.result()
                    raise AssertionError("worker stopped before the condition held")
                await asyncio.sleep(0.05)

    async def stop(self) -> None:
        self.worker.stop()
        async with asyncio.timeout(CATCH_UP_BOUND_S):
            await self.task


class ComputeKit:
    """The backends one test uses; `close()` releases them all."""

    def __init__(self, settings: BackendSettings, now_ms: int) -> None:
        self.settings = settings.model_copy(
            update={"event_log": "kafka", "cache": "redis", "config_store": "sqlite"}
        )
        self.clock = Clock(now_ms)
        self.cache = factory.make_cache(self.settings)
        self.config_store = factory.make_config_store(self.settings)
        self.store: OnlineStore = factory.make_online_store(self.settings)
        self.producer = factory.make_producer(self.settings)
        self.loader = ConfigLoader(self.cache, self.config_store)
        self._running: list[Running] = []
        self._sent = 0

    async def start(self) -> None:
        await self.cache.initialize()
        await self.config_store.initialize()
        await self.store.initialize()
        await self.producer.start()
        await self.loader.start(preload=False)

    async def close(self) -> None:
        for running in self._running:
            with contextlib.suppress(BaseException):
                await running.stop()
        await self.loader.stop()
        await self.producer.stop()
        await self.store.close()
        await self.config_store.close()
        await self.cache.close()

    async def publish(self, snapshot: ConfigSnapshot) -> None:
        await publish_config(self.cache, snapshot)

    async def produce(self, project_id: str, raws: Sequence[RawEvent], version: int) -> None:
        records = []
        for raw in raws:
            self._sent += 1
            value = message(project_id, raw, version, self._sent).encode()
            records.append((record_key(project_id, raw.user_id), value))
        await self.producer.produce_many(records)

    async def produce_raw(self, key: bytes, value: bytes) -> None:
        await self.producer.produce_many([(key, value)])

    def consumer(self, group: str | None = None) -> EventLogConsumer:
        return factory.make_consumer(self.settings, group)

    def run(
        self,
        *,
        consumer: EventLogConsumer | None = None,
        store: OnlineStore | None = None,
        options: WorkerOptions | None = None,
        dead_letter: EventLogProducer | None = None,
    ) -> Running:
        metrics = ComputeMetrics()
        writer = FeatureWriter(store or self.store, now_ms=self.clock, metrics=metrics)
        worker = ComputeWorker(
            consumer or self.consumer(),
            writer,
            self.loader,
            metrics=metrics,
            options=options or WorkerOptions(max_batch_messages=500, retry_first_s=0.05),
            dead_letter=dead_letter,
        )
        running = Running(worker, metrics)
        self._running.append(running)
        return running

    async def committed(self, group: str | None = None) -> dict[int, int]:
        """The group's committed next offset per partition (empty if none)."""
        admin = AIOKafkaAdminClient(bootstrap_servers=self.settings.kafka_bootstrap)
        await admin.start()
        try:
            offsets: dict[Any, Any] = await admin.list_consumer_group_offsets(
                group or self.settings.kafka_consumer_group
            )
        finally:
            await admin.close()
        return {tp.partition: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}


@contextlib.asynccontextmanager
async def started_kit(
    settings: BackendSettings, online_store: str, now_ms: int
) -> AsyncIterator[ComputeKit]:
    """Yields a started ComputeKit on `online_store` (its clock at `now_ms`); closes it
    after, workers it runs included."""
    kit = ComputeKit(settings.model_copy(update={"online_store": online_store}), now_ms)
    await kit.start()
    try:
        yield kit
    finally:
        await kit.close()
