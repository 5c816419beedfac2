"""Event archive contract: chDB (embedded, always) and a ClickHouse server when
CLICKHOUSE_URL is set. Both run the same SQL through clickhouse-connect.

chDB keeps one engine per process and refuses a second path while one is open, so
every chDB sink here is closed at the end of its test.
"""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from clickhouse_connect.driver.exceptions import OperationalError

from app.core.settings import BackendSettings
from app.db.analytics import AnalyticsEvent
from app.db.clickhouse import ChdbSink, ClickHouseClientSink, ClickHouseSink
from app.db.factory import make_analytics
from tests.conftest import CLICKHOUSE_URL, unique

requires_clickhouse = pytest.mark.skipif(
    not CLICKHOUSE_URL,
    reason="CLICKHOUSE_URL is not set: no ClickHouse server runs on this machine; set it "
    "(e.g. http://127.0.0.1:8123/) to run the contract tests against a server too",
)

KINDS = [
    pytest.param("chdb", id="chdb"),
    pytest.param("clickhouse", id="clickhouse", marks=requires_clickhouse),
]


@pytest.fixture(params=KINDS)
async def sink(
    request: pytest.FixtureRequest, backend_settings: BackendSettings
) -> AsyncIterator[ClickHouseClientSink]:
    settings = backend_settings.model_copy(update={"analytics": request.param})
    made = make_analytics(settings)
    assert isinstance(made, ClickHouseClientSink)
    await made.initialize()
    try:
        yield made
    finally:
        await made.close()


# Recent: the archive drops events older than its retention (400 days) as they arrive.
BASE_MS = (int(time.time()) - 86_400) * 1000 + 123
DAY_MS = 86_400_000


def an_event(project_id: str, n: int, **overrides: object) -> AnalyticsEvent:
    fields: dict[str, object] = {
        "project_id": project_id,
        "pipeline_id": "web",
        "user_id": f"u{n % 7}",
        "event": "page_view",
        "event_id": f"evt-{n}",
        "event_time_ms": BASE_MS + n * 1000,
        "received_at_ms": BASE_MS + 333 + n * 1000,
        "properties": {"path": f"/p/{n}", "price": 9.5, "tags": ["a", "b"]},
    }
    fields.update(overrides)
    return AnalyticsEvent(**fields)  # type: ignore[arg-type]


class TestInsert:
    async def test_a_batch_is_counted_per_project(self, sink: ClickHouseClientSink) -> None:
        project, other = unique("proj"), unique("proj")
        await sink.insert([an_event(project, n) for n in range(25)])
        await sink.insert([an_event(other, n) for n in range(3)])
        assert await sink.count_events(project) == 25
        assert await sink.count_events(other) == 3
        assert await sink.count_events(unique("proj")) == 0

    async def test_events_read_back_field_for_field(self, sink: ClickHouseClientSink) -> None:
        project = unique("proj")
        event = an_event(
            project,
            1,
            properties={"title": "Café ☕ «quoted»", "nested": {"k": [1, 2.5, None, True]}},
        )
        await sink.insert([event])
        assert await sink.recent_events(project) == [event]

    async def test_months_apart_events_land_in_one_table(self, sink: ClickHouseClientSink) -> None:
        project = unique("proj")
        jan, jul = BASE_MS - 200 * DAY_MS, BASE_MS - 30 * DAY_MS
        await sink.insert(
            [an_event(project, 1, event_time_ms=jan), an_event(project, 2, event_time_ms=jul)]
        )
        newest_first = await sink.recent_events(project)
        assert [e.event_time_ms for e in newest_first] == [jul, jan]

    async def test_a_large_batch_goes_in_whole(self, sink: ClickHouseClientSink) -> None:
        project = unique("proj")
        await sink.insert([an_event(project, n) for n in range(5000)])
        assert await sink.count_events(project) == 5000

    async def test_an_empty_batch_writes_nothing_and_leaves_the_sink_usable(
        self, sink: ClickHouseClientSink
    ) -> None:
        project = unique("proj")
        await sink.insert([an_event(project, 1)])
        await sink.insert([])
        assert await sink.count_events(project) == 1
        await sink.insert([an_event(project, 2)])
        assert await sink.count_events(project) == 2

    async def test_initialize_twice_keeps_the_data(self, sink: ClickHouseClientSink) -> None:
        project = unique("proj")
        await sink.insert([an_event(project, 1)])
        await sink.initialize()
        assert await sink.count_events(project) == 1


class TestIdempotence:
    async def test_an_event_inserted_again_is_counted_once(
        self, sink: ClickHouseClientSink
    ) -> None:
        project = unique("proj")
        batch = [an_event(project, n, log_offset=n) for n in range(30)]
        await sink.insert(batch)
        await sink.insert(batch[10:])  # a batch retried after a crash before its commit
        await sink.insert([batch[3]])
        assert await sink.count_events(project) == 30

    async def test_of_two_copies_the_first_in_the_log_is_kept(
        self, sink: ClickHouseClientSink
    ) -> None:
        # A retry without a timestamp carries a later receive time; compute applied the
        # first copy, so the archive keeps that one whatever order the inserts came in.
        project = unique("proj")
        first = an_event(project, 1, log_offset=10, event_time_ms=BASE_MS)
        second = an_event(project, 1, log_offset=25, event_time_ms=BASE_MS + 9000)
        await sink.insert([second])
        await sink.insert([first])
        assert await sink.recent_events(project) == [first]

    async def test_the_same_event_id_of_two_users_is_two_events(
        self, sink: ClickHouseClientSink
    ) -> None:
        # The key of compute's event-id layer: ids are remembered per user record.
        project = unique("proj")
        await sink.insert([an_event(project, 1, user_id="a"), an_event(project, 1, user_id="b")])
        assert await sink.count_events(project) == 2

    async def test_positions_are_the_highest_offset_per_partition(
        self, sink: ClickHouseClientSink
    ) -> None:
        project = unique("proj")
        await sink.insert(
            [an_event(project, n, log_partition=n % 2, log_offset=1000 + n) for n in range(9)]
        )
        positions = await sink.positions()
        assert positions[0] >= 1008
        assert positions[1] >= 1007


class TestRetention:
    async def test_the_table_expires_rows_after_the_retention_setting(
        self, backend_settings: BackendSettings
    ) -> None:
        first = ChdbSink(backend_settings.model_copy(update={"archive_retention_days": 120}))
        await first.initialize()
        try:
            ddl = await first.query_rows(
                "SELECT create_table_query FROM system.tables WHERE name = 'event_archive'"
            )
            assert "toIntervalDay(120)" in ddl[0][0]
        finally:
            await first.close()
        changed = ChdbSink(backend_settings.model_copy(update={"archive_retention_days": 200}))
        await changed.initialize()
        try:
            ddl = await changed.query_rows(
                "SELECT create_table_query FROM system.tables WHERE name = 'event_archive'"
            )
            assert "toIntervalDay(200)" in ddl[0][0]
        finally:
            await changed.close()

    async def test_events_older_than_the_retention_go_at_the_next_merge(
        self, sink: ClickHouseClientSink
    ) -> None:
        project = unique("proj")
        old = 1_000_000_000_000  # 2001: far past any retention
        await sink.insert([an_event(project, 1, event_time_ms=old), an_event(project, 2)])
        await sink.command("OPTIMIZE TABLE event_archive FINAL")
        assert [e.event_id for e in await sink.recent_events(project)] == ["evt-2"]


class TestChdbFiles:
    async def test_events_survive_closing_and_reopening(
        self, backend_settings: BackendSettings
    ) -> None:
        project = unique("proj")
        first = ChdbSink(backend_settings)
        await first.initialize()
        try:
            await first.insert([an_event(project, n) for n in range(4)])
        finally:
            await first.close()
        assert (Path(backend_settings.data_dir) / "chdb").is_dir()

        reopened = ChdbSink(backend_settings)
        await reopened.initialize()
        try:
            assert await reopened.count_events(project) == 4
        finally:
            await reopened.close()


class TestServerUnreachable:
    async def test_initialize_raises_when_no_server_answers(
        self, backend_settings: BackendSettings
    ) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        settings = backend_settings.model_copy(
            update={"clickhouse_url": f"http://127.0.0.1:{port}/"}
        )
        sink = ClickHouseSink(settings)
        try:
            with pytest.raises(OperationalError):
                await sink.initialize()
        finally:
            await sink.close()
