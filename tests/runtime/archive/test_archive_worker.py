"""The archive worker on real Kafka and chDB: every event once, whatever the log holds."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence

import pytest

from app.core.settings import BackendSettings
from app.db import factory
from app.db.analytics import AnalyticsEvent
from app.db.clickhouse import ChdbSink
from app.schemas.event import EventMessage, record_key
from runtime.archive.metrics import ArchiveMetrics
from runtime.archive.worker import ArchiveOptions, ArchiveWorker
from runtime.compute.worker import wall_clock_ms
from tests.conftest import unique
from tests.support.archive import chdb_archive, run_until_archived

pytestmark = [pytest.mark.kafka]


def a_message(project_id: str, n: int, user: str) -> EventMessage:
    now = wall_clock_ms()
    return EventMessage(
        project_id=project_id,
        pipeline_id="web",
        event="page_view",
        user_id=user,
        event_id=f"evt-{n}",
        event_time_ms=now - n,
        received_at_ms=now,
        version=1,
        properties={"n": n},
    )


@pytest.fixture
async def archive(backend_settings: BackendSettings) -> AsyncIterator[ChdbSink]:
    async with chdb_archive(backend_settings) as sink:
        yield sink


class TestEveryEventOnce:
    async def test_copies_in_the_log_and_a_redelivered_batch_are_stored_once(
        self, backend_settings: BackendSettings, archive: ChdbSink
    ) -> None:
        settings = backend_settings.model_copy(update={"event_log": "kafka"})
        project = unique("proj")
        producer = factory.make_producer(settings)
        await producer.start()
        try:
            messages = [a_message(project, n, f"u{n % 13}") for n in range(600)]
            # 50 events produced twice (a producer retry after a broker outage).
            records = [(record_key(project, m.user_id), m.encode()) for m in messages]
            await producer.produce_many(records + records[100:150])
        finally:
            await producer.stop()

        group = unique("archive")
        first_metrics = ArchiveMetrics()
        first = ArchiveWorker(
            factory.make_consumer(settings, group),
            archive,
            metrics=first_metrics,
            options=ArchiveOptions(max_batch_messages=100, poll_timeout_ms=100),
        )
        await run_until_archived(first, first_metrics, 650)
        # A second member of the group that never saw the commit (a crash between the
        # insert and the commit) reads everything again: inserted again, stored once.
        again_metrics = ArchiveMetrics()
        again = ArchiveWorker(
            factory.make_consumer(settings, unique("archive")),
            archive,
            metrics=again_metrics,
            options=ArchiveOptions(max_batch_messages=100, poll_timeout_ms=100),
        )
        await run_until_archived(again, again_metrics, 650)

        assert await archive.count_events(project) == 600
        stored = await archive.recent_events(project, limit=1000)
        assert sorted(e.event_id for e in stored) == sorted(m.event_id for m in messages)

    async def test_a_record_that_is_not_an_event_is_skipped_and_the_rest_archived(
        self, backend_settings: BackendSettings, archive: ChdbSink
    ) -> None:
        settings = backend_settings.model_copy(update={"event_log": "kafka"})
        project = unique("proj")
        producer = factory.make_producer(settings)
        await producer.start()
        try:
            good = [a_message(project, n, "u1") for n in range(3)]
            await producer.produce_many(
                [(record_key(project, "u1"), good[0].encode()), (b"x", b"not json")]
                + [(record_key(project, "u1"), m.encode()) for m in good[1:]]
            )
        finally:
            await producer.stop()
        metrics = ArchiveMetrics()
        worker = ArchiveWorker(
            factory.make_consumer(settings, unique("archive")), archive, metrics=metrics
        )
        await run_until_archived(worker, metrics, 3)
        assert await archive.count_events(project) == 3
        assert metrics.decode_errors._value.get() == 1


class TestInsertFailures:
    async def test_a_failing_archive_keeps_the_batch_uncommitted_until_it_takes_it(
        self, backend_settings: BackendSettings, archive: ChdbSink
    ) -> None:
        settings = backend_settings.model_copy(update={"event_log": "kafka"})
        project = unique("proj")
        producer = factory.make_producer(settings)
        await producer.start()
        try:
            await producer.produce_many(
                [(record_key(project, "u"), a_message(project, n, "u").encode()) for n in range(5)]
            )
        finally:
            await producer.stop()

        class Flaky(ChdbSink):
            failures = 3

            async def insert(
                self, events: Sequence[AnalyticsEvent], through: Mapping[int, int] | None = None
            ) -> None:
                if Flaky.failures:
                    Flaky.failures -= 1
                    raise ConnectionError("archive down")
                await archive.insert(events, through)

        metrics = ArchiveMetrics()
        worker = ArchiveWorker(
            factory.make_consumer(settings, unique("archive")),
            Flaky(settings),
            metrics=metrics,
            options=ArchiveOptions(retry_first_s=0.01),
        )
        await run_until_archived(worker, metrics, 5)
        assert metrics.insert_failures._value.get() == 3
        assert await archive.count_events(project) == 5
