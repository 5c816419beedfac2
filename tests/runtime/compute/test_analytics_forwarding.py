"""Applied events reach the analytics sink (chDB) off the feature path: a sink outage
never blocks or changes features, the queue catches up when it is back, and a full
queue drops the oldest events with a metric."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import pytest

from app.core.settings import BackendSettings
from app.db.analytics import AnalyticsEvent, AnalyticsSink
from app.db.clickhouse import ChdbSink
from app.tiles.record import serve
from runtime.compute.analytics_forwarder import AnalyticsForwarder
from runtime.compute.metrics import ComputeMetrics
from runtime.compute.specs import build_specs
from tests.conftest import unique
from tests.factories import new_id
from tests.runtime.compute.harness import CATCH_UP_BOUND_S, ComputeKit, sample
from tests.runtime.compute.oracle import (
    RawEvent,
    assert_same_values,
    config,
    feature,
    oracle_values,
    pipeline,
)

NOW = 1_767_225_600_000


@pytest.fixture
async def chdb(backend_settings: BackendSettings) -> AsyncIterator[ChdbSink]:
    sink = ChdbSink(backend_settings)
    await sink.initialize()
    try:
        yield sink
    finally:
        await sink.close()


class _Outage(AnalyticsSink):
    """The real chDB sink behind a switch: while `down`, inserts fail as a dead server's
    would."""

    def __init__(self, inner: AnalyticsSink) -> None:
        self._inner = inner
        self.down = True

    async def ping(self) -> None:
        await self._inner.ping()

    async def insert(self, events: Sequence[AnalyticsEvent]) -> None:
        if self.down:
            raise ConnectionError("analytics server unavailable")
        await self._inner.insert(events)

    async def count_events(self, project_id: str) -> int:
        return await self._inner.count_events(project_id)


async def _until(condition: object, bound_s: float = CATCH_UP_BOUND_S) -> None:
    assert callable(condition)
    async with asyncio.timeout(bound_s):
        while True:
            result = condition()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return
            await asyncio.sleep(0.05)


@pytest.mark.kafka
@pytest.mark.redis
class TestSinkOutage:
    async def test_a_failing_sink_does_not_block_features_and_catches_up_when_back(
        self, backend_settings: BackendSettings, chdb: ChdbSink
    ):
        kit = ComputeKit(backend_settings.model_copy(update={"online_store": "sqlite"}), NOW)
        await kit.start()
        try:
            project, p = unique("shop"), new_id()
            features = [feature("n", p, "COUNT", ["1h"]), feature("s", p, "SUM", ["1h"])]
            snapshot = config(project, 1, [pipeline(p, "add_to_cart")], features)
            await kit.publish(snapshot)
            events = [
                RawEvent(f"u{i % 6}", p, "add_to_cart", NOW - i * 1000, {"price": i})
                for i in range(90)
            ]
            await kit.produce(project, events, version=1)
            sink = _Outage(chdb)

            running = kit.run(analytics=sink)
            await running.wait_processed(len(events))
            await running.wait_for(lambda: sample(running.metrics, "analytics_failures_total") >= 2)

            # Features are complete and exact while analytics is down.
            specs = build_specs(snapshot)
            for user in (f"u{i}" for i in range(6)):
                stored = await kit.store.get(project, user)
                assert stored is not None
                mine = [e for e in events if e.user_id == user]
                assert_same_values(
                    serve(stored.record, specs.specs, NOW), oracle_values(features, mine, NOW)
                )
            assert sum((await kit.committed()).values()) == len(events)
            assert sample(running.metrics, "analytics_queue_events") == len(events)
            assert await chdb.count_events(project) == 0

            sink.down = False

            async def all_inserted() -> bool:
                return await chdb.count_events(project) == len(events)

            await _until(all_inserted)
            await running.stop()
            assert sample(running.metrics, "analytics_inserted_total") == len(events)
            assert sample(running.metrics, "analytics_dropped_total") == 0
        finally:
            await kit.close()


class TestBoundedQueue:
    async def test_a_full_queue_drops_the_oldest_events_and_counts_them(self, chdb: ChdbSink):
        metrics = ComputeMetrics()
        forwarder = AnalyticsForwarder(chdb, metrics, max_queue=3)
        project = unique("shop")
        events = [
            AnalyticsEvent(project, new_id(), "u1", "add_to_cart", f"e{i}", NOW + i, NOW, {})
            for i in range(5)
        ]

        forwarder.offer(events)
        forwarder.start()
        await _until(lambda: forwarder.queued == 0)
        await forwarder.close()

        assert metrics.registry.get_sample_value("analytics_dropped_total") == 2
        kept = await chdb.recent_events(project)
        assert sorted(e.event_id for e in kept) == ["e2", "e3", "e4"]
