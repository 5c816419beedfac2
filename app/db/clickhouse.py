"""The event archive: every accepted event, once, in ClickHouse (server) or chDB (embedded).

Both are clickhouse-connect clients running the same SQL: ClickHouseSink talks HTTP to
`settings.clickhouse_url`; ChdbSink uses clickhouse-connect's `chdb` interface
(`get_client(interface="chdb", path=...)`, an in-process engine whose files live in
`settings.data_dir / "chdb"`). clickhouse-connect has no async chDB client, so both run
the synchronous client in a single-thread executor, never on the event loop.

Lossless and idempotent. The archive process (`runtime/archive`) inserts a batch, then
commits its offsets, so a crash re-inserts rather than loses. `event_archive` is a
ReplacingMergeTree keyed by (project_id, user_id, event_id): the key compute's event-id
layer uses, so archive and online store agree on what a second copy is. Copies are
merged away in the background; every read says `FINAL`, so a copy not merged yet is
never counted. Of several copies the FIRST in the log is kept (`precedence` falls as the
offset grows; copies of one user's event share a partition): compute applied that one,
and a retry without a timestamp carries a later receive time. `log_partition` and
`log_offset` say where each event sat in the events topic: a rebuild uses them to hand
the record back to compute at the right position (`app/services/rebuild_service.py`).

Retention: rows expire `settings.archive_retention_days` after their event time (a TTL
applied by merges); `initialize` moves an existing table's TTL to the setting.

chDB holds one engine per process: sinks on the same path share it, and opening a
different path while a sink is open raises clickhouse_connect's ProgrammingError.
Its calls go through one process-wide thread, because chDB is not thread-safe. Two
processes cannot open one chDB path: split processes need a ClickHouse server.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import clickhouse_connect
from clickhouse_connect.driver.client import Client

from app.core.settings import BackendSettings
from app.db.analytics import AnalyticsEvent, AnalyticsSink

_T = TypeVar("_T")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

ARCHIVE_TABLE = "event_archive"
_CREATE_ARCHIVE = """
CREATE TABLE IF NOT EXISTS event_archive (
    project_id LowCardinality(String),
    pipeline_id LowCardinality(String),
    user_id String,
    event LowCardinality(String),
    event_id String,
    event_time DateTime64(3, 'UTC'),
    received_at DateTime64(3, 'UTC'),
    properties String,
    log_partition UInt32,
    log_offset UInt64,
    precedence UInt64 MATERIALIZED 18446744073709551615 - log_offset
)
ENGINE = ReplacingMergeTree(precedence)
ORDER BY (project_id, user_id, event_id)
TTL {ttl}
"""
COLUMNS = [
    "project_id",
    "pipeline_id",
    "user_id",
    "event",
    "event_id",
    "event_time",
    "received_at",
    "properties",
    "log_partition",
    "log_offset",
]
_COUNT_EVENTS = "SELECT count() FROM event_archive FINAL WHERE project_id = {project_id:String}"
_RECENT_EVENTS = """
SELECT project_id, pipeline_id, user_id, event, event_id, event_time, received_at, properties,
       log_partition, log_offset
FROM event_archive FINAL WHERE project_id = {project_id:String}
ORDER BY event_time DESC, event_id LIMIT {limit:UInt32}
"""
_TABLE_DDL = "SELECT create_table_query FROM system.tables WHERE name = 'event_archive'"
# How far each partition is archived. Not max(log_offset) of event_archive alone: a merge
# drops the later copy of an event (the table keeps the first), so a partition whose last
# record was a copy would read as behind for ever, and records that are not events are
# never rows. So each batch also records the offsets it covered here (the archive before
# this table existed is still read from event_archive).
_CREATE_POSITIONS = """
CREATE TABLE IF NOT EXISTS archive_positions (log_partition UInt32, log_offset UInt64)
ENGINE = ReplacingMergeTree(log_offset) ORDER BY log_partition
"""
_POSITIONS = """
SELECT log_partition, max(o) FROM (
    SELECT log_partition, max(log_offset) AS o FROM archive_positions GROUP BY log_partition
    UNION ALL
    SELECT log_partition, max(log_offset) AS o FROM event_archive GROUP BY log_partition
) GROUP BY log_partition
"""


def _ttl(retention_days: int) -> str:
    # As ClickHouse prints it back in `create_table_query`, so a match means no change.
    return f"toDateTime(event_time) + toIntervalDay({int(retention_days)})"


def _to_datetime(ms: int) -> datetime:
    # Exact: going through a float timestamp could round .123 to .122999.
    return _EPOCH + timedelta(milliseconds=ms)


def _to_ms(value: datetime) -> int:
    aware = value if value.tzinfo else value.replace(tzinfo=UTC)
    return (aware - _EPOCH) // timedelta(milliseconds=1)


def _row(event: AnalyticsEvent) -> list[Any]:
    return [
        event.project_id,
        event.pipeline_id,
        event.user_id,
        event.event,
        event.event_id,
        _to_datetime(event.event_time_ms),
        _to_datetime(event.received_at_ms),
        json.dumps(event.properties, separators=(",", ":"), ensure_ascii=False),
        event.log_partition,
        event.log_offset,
    ]


def _event(row: Sequence[Any]) -> AnalyticsEvent:
    project_id, pipeline_id, user_id, event, event_id, event_time, received_at, props, p, o = row
    return AnalyticsEvent(
        project_id=project_id,
        pipeline_id=pipeline_id,
        user_id=user_id,
        event=event,
        event_id=event_id,
        event_time_ms=_to_ms(event_time),
        received_at_ms=_to_ms(received_at),
        properties=json.loads(props),
        log_partition=p,
        log_offset=o,
    )


class ClickHouseClientSink(AnalyticsSink):
    """The SQL both sinks share; subclasses say how to build the client and which
    thread runs it."""

    def __init__(self, retention_days: int) -> None:
        self._client: Client | None = None
        self._retention_days = retention_days

    def _connect(self) -> Client:
        raise NotImplementedError

    def _executor(self) -> ThreadPoolExecutor:
        raise NotImplementedError

    async def _run(self, fn: Callable[[], _T]) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._executor(), fn)

    def _started(self) -> Client:
        if self._client is None:
            raise RuntimeError(f"{type(self).__name__} used before initialize()")
        return self._client

    async def initialize(self) -> None:
        """Connects, creates `event_archive` if needed and sets its TTL to the retention
        setting; idempotent. Raises clickhouse_connect's errors when the engine or server
        cannot be reached."""
        if self._client is not None:
            return
        ttl = _ttl(self._retention_days)

        def connect() -> Client:
            client = self._connect()
            try:
                client.command(_CREATE_ARCHIVE.format(ttl=ttl))
                client.command(_CREATE_POSITIONS)
                ddl = str(client.query(_TABLE_DDL).result_rows[0][0])
                if f"TTL {ttl}" not in ddl:
                    # A changed retention: rows past the new one go at the next merges.
                    client.command(f"ALTER TABLE {ARCHIVE_TABLE} MODIFY TTL {ttl}")
            except BaseException:
                client.close()
                raise
            return client

        self._client = await self._run(connect)

    async def close(self) -> None:
        """Closes the client; idempotent."""
        client, self._client = self._client, None
        if client is not None:
            await self._run(client.close)

    async def ping(self) -> None:
        """Runs `SELECT 1`; raises when the engine or server does not answer."""
        client = self._started()
        await self._run(lambda: client.command("SELECT 1"))

    async def insert(
        self, events: Sequence[AnalyticsEvent], through: Mapping[int, int] | None = None
    ) -> None:
        """Inserts the batch with one INSERT (atomic below a million rows), then the
        offsets it covered (`through`, after the events: a crash in between only makes
        `positions` lag); raises on failure (nothing is retried here). Inserting an
        event again is harmless."""
        client = self._started()
        if events:
            rows = [_row(event) for event in events]
            await self._run(lambda: client.insert(ARCHIVE_TABLE, rows, column_names=COLUMNS))
        if through:
            covered = [[int(p), int(o)] for p, o in through.items()]
            await self._run(
                lambda: client.insert(
                    "archive_positions", covered, column_names=["log_partition", "log_offset"]
                )
            )

    async def count_events(self, project_id: str) -> int:
        """Returns how many distinct events the project has archived."""
        client = self._started()
        result = await self._run(
            lambda: client.query(_COUNT_EVENTS, parameters={"project_id": project_id})
        )
        return int(result.result_rows[0][0])

    async def recent_events(self, project_id: str, limit: int = 100) -> list[AnalyticsEvent]:
        """Returns the project's latest events, newest first (diagnostics and tests)."""
        client = self._started()
        params = {"project_id": project_id, "limit": limit}
        result = await self._run(lambda: client.query(_RECENT_EVENTS, parameters=params))
        return [_event(row) for row in result.result_rows]

    async def positions(self) -> dict[int, int]:
        """Returns, per partition of the events topic, the highest offset archived.

        The archive inserts each partition's records in log order and commits only
        after the insert, so every record of that partition up to it is archived
        (retention aside; a copy of an earlier event is kept as that event)."""
        client = self._started()
        result = await self._run(lambda: client.query(_POSITIONS))
        return {int(p): int(o) for p, o in result.result_rows}

    async def query_rows(
        self, sql: str, parameters: Mapping[str, Any] | None = None
    ) -> list[tuple[Any, ...]]:
        """Returns the rows of one SELECT (`app/db/history.py` builds them)."""
        client = self._started()
        params = dict(parameters or {})
        result = await self._run(lambda: client.query(sql, parameters=params))
        return [tuple(row) for row in result.result_rows]

    async def command(self, sql: str) -> None:
        """Runs one statement that returns nothing (DDL)."""
        client = self._started()
        await self._run(lambda: client.command(sql))

    async def insert_rows(
        self, table: str, rows: Sequence[Sequence[Any]], columns: Sequence[str]
    ) -> None:
        """Inserts rows into `table` with one INSERT."""
        client = self._started()
        data = [list(row) for row in rows]
        await self._run(lambda: client.insert(table, data, column_names=list(columns)))


class ClickHouseSink(ClickHouseClientSink):
    """Events into a ClickHouse server over HTTP (`settings.clickhouse_url`, which may
    carry user, password and database: `http://user:pass@host:8123/db`)."""

    def __init__(self, settings: BackendSettings) -> None:
        super().__init__(settings.archive_retention_days)
        self._url = settings.clickhouse_url
        self._pool: ThreadPoolExecutor | None = None

    def _connect(self) -> Client:
        return clickhouse_connect.get_client(
            dsn=self._url, connect_timeout=5, send_receive_timeout=30
        )

    def _executor(self) -> ThreadPoolExecutor:
        # One thread: the client's HTTP session runs one query at a time.
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="clickhouse")
        return self._pool

    async def close(self) -> None:
        """Closes the client and its thread; idempotent."""
        await super().close()
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False)


_CHDB_EXECUTOR: ThreadPoolExecutor | None = None
_CHDB_EXECUTOR_LOCK = threading.Lock()


def _chdb_executor() -> ThreadPoolExecutor:
    """The one thread of the process that talks to chDB."""
    global _CHDB_EXECUTOR
    with _CHDB_EXECUTOR_LOCK:
        if _CHDB_EXECUTOR is None:
            _CHDB_EXECUTOR = ThreadPoolExecutor(1, thread_name_prefix="chdb")
        return _CHDB_EXECUTOR


class ChdbSink(ClickHouseClientSink):
    """Events into the embedded chDB engine under `settings.data_dir / "chdb"`."""

    def __init__(self, settings: BackendSettings) -> None:
        super().__init__(settings.archive_retention_days)
        self._path = settings.data_dir / "chdb"

    def _connect(self) -> Client:
        self._path.mkdir(parents=True, exist_ok=True)
        return clickhouse_connect.get_client(interface="chdb", path=str(self._path))

    def _executor(self) -> ThreadPoolExecutor:
        return _chdb_executor()
