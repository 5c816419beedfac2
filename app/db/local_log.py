"""The durable local event log for standalone mode: one SQLite file, Kafka's contract.

`settings.data_dir / "event_log.sqlite3"` holds `_PARTITIONS` partitions. A record goes
to partition `crc32(key) % partitions` (crc32, not Python's `hash()`, which is salted
per process: the same key must land in the same partition after a restart). Offsets
are per partition, strictly increasing and never reused, even after retention removed
old records. A produce commits in WAL mode with `synchronous=FULL`, so it returns only
once the records are fsynced: an acknowledged record survives a process kill.

Consumers track their position in memory and commit it to a group-offsets table, so a
new consumer of the group resumes after the last commit (at-least-once). There is no
group membership: every consumer gets every partition, so run one consumer per group
(standalone is one process).

SQLite calls block; each producer and consumer runs its connection in a private
single-thread executor so the event loop never waits on disk.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import TypeVar

from app.core.settings import BackendSettings
from app.db.event_log import EventLogConsumer, EventLogProducer, EventLogUnavailable, LogRecord

DEFAULT_PARTITIONS = 4
DEFAULT_RETENTION_MS = 7 * 24 * 3600 * 1000  # Kafka's default retention
_TRIM_EVERY_S = 3600.0
_POLL_INTERVAL_S = 0.05
_BUSY_TIMEOUT_MS = 5000

_T = TypeVar("_T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS log_meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS log_partitions (
    partition INTEGER PRIMARY KEY, next_offset INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS log_records (
    partition INTEGER NOT NULL, record_offset INTEGER NOT NULL,
    key BLOB NOT NULL, value BLOB NOT NULL, timestamp_ms INTEGER NOT NULL,
    PRIMARY KEY (partition, record_offset)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS log_group_offsets (
    group_id TEXT NOT NULL, partition INTEGER NOT NULL, next_offset INTEGER NOT NULL,
    PRIMARY KEY (group_id, partition)) WITHOUT ROWID;
"""


def log_path(settings: BackendSettings) -> Path:
    """The SQLite file of the local log."""
    return settings.data_dir / "event_log.sqlite3"


def partition_for(key: bytes, partitions: int) -> int:
    """The partition of a key: stable across processes and restarts."""
    return zlib.crc32(key) % partitions


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE ... COMMIT: one writer at a time, one fsync per transaction."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _connect(path: Path, partitions: int) -> tuple[sqlite3.Connection, int]:
    """Opens (creating if needed) the log; returns the connection and the partition
    count the file was created with (it wins over `partitions` for an existing file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.executescript(_SCHEMA)
        with _transaction(conn):
            conn.execute(
                "INSERT OR IGNORE INTO log_meta (name, value) VALUES ('partitions', ?)",
                (partitions,),
            )
            (stored,) = conn.execute(
                "SELECT value FROM log_meta WHERE name = 'partitions'"
            ).fetchone()
            conn.executemany(
                "INSERT OR IGNORE INTO log_partitions (partition, next_offset) VALUES (?, 0)",
                [(p,) for p in range(stored)],
            )
    except BaseException:
        conn.close()
        raise
    return conn, int(stored)


class _LogFile:
    """One connection to the log file, used from one private thread."""

    def __init__(self, settings: BackendSettings, partitions: int) -> None:
        self.path = log_path(settings)
        self.requested_partitions = partitions
        self.partitions = partitions
        self._conn: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None

    @property
    def is_open(self) -> bool:
        return self._conn is not None

    async def open(self) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="local-log")
        if self._conn is None:
            self._conn, self.partitions = await self._run_raw(
                lambda: _connect(self.path, self.requested_partitions)
            )

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await self._run_raw(conn.close)
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False)

    async def run(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """Runs fn(connection) in the log's thread; sqlite/OS errors → EventLogUnavailable."""
        await self.open()
        conn = self._conn
        assert conn is not None
        return await self._run_raw(lambda: fn(conn))

    async def _run_raw(self, fn: Callable[[], _T]) -> _T:
        assert self._executor is not None
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn)
        except (sqlite3.Error, OSError) as exc:
            raise EventLogUnavailable(f"local event log {self.path}: {exc!r}") from exc


def _append(
    conn: sqlite3.Connection, records: Sequence[tuple[bytes, bytes]], partitions: int
) -> None:
    now_ms = int(time.time() * 1000)
    with _transaction(conn):
        next_offsets = dict(conn.execute("SELECT partition, next_offset FROM log_partitions"))
        rows = []
        for key, value in records:
            partition = partition_for(key, partitions)
            offset = next_offsets[partition]
            next_offsets[partition] = offset + 1
            rows.append((partition, offset, bytes(key), bytes(value), now_ms))
        conn.executemany("INSERT INTO log_records VALUES (?, ?, ?, ?, ?)", rows)
        conn.executemany(
            "UPDATE log_partitions SET next_offset = ? WHERE partition = ?",
            [(offset, p) for p, offset in next_offsets.items()],
        )


def _trim(conn: sqlite3.Connection, partitions: int, cutoff_ms: int) -> int:
    deleted = 0
    for partition in range(partitions):
        # Timestamps grow with offsets (both assigned under the write lock), so the
        # first record young enough marks where retention starts; walking the primary
        # key from the partition's start stops there.
        row = conn.execute(
            "SELECT record_offset FROM log_records WHERE partition = ? AND timestamp_ms >= ?"
            " ORDER BY record_offset LIMIT 1",
            (partition, cutoff_ms),
        ).fetchone()
        if row is None:
            limit = conn.execute(
                "SELECT next_offset FROM log_partitions WHERE partition = ?", (partition,)
            ).fetchone()[0]
        else:
            limit = row[0]
        cursor = conn.execute(
            "DELETE FROM log_records WHERE partition = ? AND record_offset < ?", (partition, limit)
        )
        deleted += cursor.rowcount
    return deleted


class LocalEventProducer(EventLogProducer):
    """Appends to the local log; every acknowledged call is fsynced."""

    def __init__(
        self,
        settings: BackendSettings,
        partitions: int = DEFAULT_PARTITIONS,
        retention_ms: int = DEFAULT_RETENTION_MS,
    ) -> None:
        self._file = _LogFile(settings, partitions)
        self._retention_ms = retention_ms
        self._last_trim = time.monotonic()

    async def start(self) -> None:
        """Opens (creating if needed) the log file and applies the retention; raises
        EventLogUnavailable."""
        if not self._file.is_open:
            await self._file.open()
            await self.trim()

    async def stop(self) -> None:
        """Closes the file; everything acknowledged is already on disk."""
        await self._file.close()

    async def ping(self) -> None:
        """Returns when the file answers a query; raises EventLogUnavailable."""
        await self._file.run(lambda conn: conn.execute("SELECT 1").fetchone())

    async def produce_many(self, records: Sequence[tuple[bytes, bytes]]) -> None:
        """Appends the records in one fsynced transaction (all or none); raises
        EventLogUnavailable."""
        if not records:
            return
        await self._file.open()
        partitions = self._file.partitions
        await self._file.run(lambda conn: _append(conn, records, partitions))
        if time.monotonic() - self._last_trim > _TRIM_EVERY_S:
            await self.trim()

    async def trim(self) -> int:
        """Deletes records older than the retention; returns how many. Offsets are never
        reused afterwards."""
        self._last_trim = time.monotonic()
        await self._file.open()
        partitions = self._file.partitions
        cutoff_ms = int(time.time() * 1000) - self._retention_ms
        return await self._file.run(lambda conn: _trim(conn, partitions, cutoff_ms))


def _fetch(
    conn: sqlite3.Connection, positions: Mapping[int, int], order: Sequence[int], max_records: int
) -> list[LogRecord]:
    records: list[LogRecord] = []
    for partition in order:
        remaining = max_records - len(records)
        if remaining <= 0:
            break
        rows = conn.execute(
            "SELECT record_offset, key, value, timestamp_ms FROM log_records"
            " WHERE partition = ? AND record_offset >= ? ORDER BY record_offset LIMIT ?",
            (partition, positions[partition], remaining),
        ).fetchall()
        records.extend(LogRecord(partition, off, key, value, ts) for off, key, value, ts in rows)
    return records


class LocalEventConsumer(EventLogConsumer):
    """Reads every partition of the local log for group `group_id` (one consumer per
    group: there is no partition assignment)."""

    def __init__(
        self, settings: BackendSettings, group_id: str, partitions: int = DEFAULT_PARTITIONS
    ) -> None:
        self._file = _LogFile(settings, partitions)
        self._group_id = group_id
        self._positions: dict[int, int] = {}
        # Rotates the partition read first, so one busy partition cannot starve others.
        self._next_first = 0

    async def start(self) -> None:
        """Opens the log and loads the group's committed offsets; idempotent."""
        if self._file.is_open:
            return
        await self._file.open()
        committed = dict(
            await self._file.run(
                lambda conn: conn.execute(
                    "SELECT partition, next_offset FROM log_group_offsets WHERE group_id = ?",
                    (self._group_id,),
                ).fetchall()
            )
        )
        self._positions = {p: committed.get(p, 0) for p in range(self._file.partitions)}

    async def stop(self) -> None:
        """Closes the file without committing."""
        await self._file.close()

    async def getmany(self, max_records: int, timeout_ms: int) -> list[LogRecord]:
        """Returns up to max_records records after the position (offset order within a
        partition), waiting up to timeout_ms for some; raises EventLogUnavailable."""
        await self.start()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_ms / 1000
        partitions = self._file.partitions
        while True:
            first = self._next_first
            self._next_first = (first + 1) % partitions
            order = [(first + i) % partitions for i in range(partitions)]
            positions = dict(self._positions)
            fetch = partial(_fetch, positions=positions, order=order, max_records=max_records)
            records = await self._file.run(fetch)
            if records:
                for record in records:
                    self._positions[record.partition] = record.offset + 1
                return records
            remaining = deadline - loop.time()
            if remaining <= 0:
                return []
            await asyncio.sleep(min(_POLL_INTERVAL_S, remaining))

    async def commit(self, next_offsets: Mapping[int, int]) -> None:
        """Stores the group's next offsets durably; raises EventLogUnavailable."""
        if not next_offsets:
            return
        await self.start()
        rows = [(self._group_id, p, o) for p, o in next_offsets.items()]

        def upsert(conn: sqlite3.Connection) -> None:
            with _transaction(conn):
                conn.executemany(
                    "INSERT INTO log_group_offsets (group_id, partition, next_offset)"
                    " VALUES (?, ?, ?) ON CONFLICT (group_id, partition)"
                    " DO UPDATE SET next_offset = excluded.next_offset",
                    rows,
                )

        await self._file.run(upsert)

    async def end_offsets(self) -> dict[int, int]:
        """Returns, per partition, the offset of the next record appended."""
        await self.start()
        ends = await self._file.run(
            lambda conn: conn.execute(
                "SELECT partition, next_offset FROM log_partitions"
            ).fetchall()
        )
        return {int(p): int(o) for p, o in ends}

    async def lag(self) -> dict[int, int]:
        """Returns, per partition, how many records lie after the position."""
        await self.start()
        ends = dict(
            await self._file.run(
                lambda conn: conn.execute(
                    "SELECT partition, next_offset FROM log_partitions"
                ).fetchall()
            )
        )
        return {p: max(0, ends.get(p, 0) - pos) for p, pos in self._positions.items()}
