"""The online store for standalone mode: one SQLite file.

Table `online_records (project_id, user_id, record, generation, expires_at_ms, ids)`:
`record` the tiles blob of `codec.encode_record` (TEXT holding JSON in rows written
before the upgrade, which still read), `ids` the event ids blob, written by the same
statement and read only by `get`/`get_many` (not by serving's reads). A file created
before `ids` existed gains the column on open.
A row whose `expires_at_ms` has passed is absent for every call: reads skip it (and
delete it, lazily), a create replaces it with generation 1, an update fails. A sweep
on the write path removes expired rows nobody reads again.

Compare-and-set is a single conditional INSERT ... ON CONFLICT DO UPDATE ... WHERE or
UPDATE ... WHERE generation = ?, so SQLite's write lock makes it atomic. Writes are
`synchronous=FULL`: compute commits its event-log offset after the write, so a write
that an OS crash could lose would lose events.

The sqlite3 module blocks; one thread serialises the writes and another serves the
reads (WAL lets readers run beside the writer), so the event loop never waits on disk.
`put_many` runs its compare-and-sets in one transaction: one fsync for a whole batch
of users instead of one per user.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from app.core.settings import BackendSettings
from app.db.online_store import OnlineStore, RecordWrite, StoredRecord, WriteConflict
from app.tiles.codec import decode_record, encode_record

_T = TypeVar("_T")
_R = TypeVar("_R")
_SWEEP_EVERY_S = 600.0
# SQLite caps bound parameters (32766 by default); batches stay well below it.
_MAX_IDS_PER_QUERY = 500

_SCHEMA = """
CREATE TABLE IF NOT EXISTS online_records (
    project_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    record TEXT NOT NULL,
    generation INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    ids BLOB,
    PRIMARY KEY (project_id, user_id)
) WITHOUT ROWID;
"""

_CREATE = """
INSERT INTO online_records (project_id, user_id, record, generation, expires_at_ms, ids)
VALUES (?1, ?2, ?3, 1, ?4, ?6)
ON CONFLICT (project_id, user_id) DO UPDATE
SET record = excluded.record, generation = 1, expires_at_ms = excluded.expires_at_ms,
    ids = excluded.ids
WHERE online_records.expires_at_ms <= ?5
"""

_UPDATE = """
UPDATE online_records
SET record = ?3, generation = generation + 1, expires_at_ms = ?4, ids = ?7
WHERE project_id = ?1 AND user_id = ?2 AND generation = ?5 AND expires_at_ms > ?6
"""


def store_path(settings: BackendSettings) -> Path:
    """The SQLite file of the standalone online store."""
    return settings.data_dir / "online_store.sqlite3"


def _now_ms() -> int:
    return int(time.time() * 1000)


def _connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 5000")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.executescript(_SCHEMA)
    columns = {row[1] for row in conn.execute("PRAGMA table_info(online_records)")}
    if "ids" not in columns:  # a file of the version before the ids had their own column
        conn.execute("ALTER TABLE online_records ADD COLUMN ids BLOB")
    return conn


class _Connection:
    """One SQLite connection used from one private thread."""

    def __init__(self, path: Path, name: str) -> None:
        self._path = path
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=name)
        self._conn: sqlite3.Connection | None = None

    async def run(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        def call() -> _T:
            if self._conn is None:
                self._conn = _connect(self._path)
            return fn(self._conn)

        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def close(self) -> None:
        def close() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        await asyncio.get_running_loop().run_in_executor(self._executor, close)
        self._executor.shutdown(wait=False)


_Row = tuple[bytes | str, int, bytes | None]


def _select(
    conn: sqlite3.Connection,
    project_id: str,
    user_ids: Sequence[str],
    now_ms: int,
    with_ids: bool,
) -> tuple[dict[str, _Row], list[str]]:
    """(tiles, generation, ids or None) of the live records by user id, and the ids of
    expired rows seen. Decoding is left to the caller, one record at a time."""
    live: dict[str, _Row] = {}
    ids_column = "ids" if with_ids else "NULL"
    expired: list[str] = []
    unique_ids = list(dict.fromkeys(user_ids))
    for start in range(0, len(unique_ids), _MAX_IDS_PER_QUERY):
        chunk = unique_ids[start : start + _MAX_IDS_PER_QUERY]
        marks = ",".join("?" * len(chunk))
        # Only "?" placeholders are interpolated: the ids themselves are bound.
        query = (
            f"SELECT user_id, record, generation, expires_at_ms, {ids_column}"  # noqa: S608
            f" FROM online_records WHERE project_id = ? AND user_id IN ({marks})"
        )
        rows = conn.execute(query, (project_id, *chunk))
        for user_id, tiles, generation, expires_at_ms, ids in rows:
            if expires_at_ms <= now_ms:
                expired.append(user_id)
            else:
                live[user_id] = (tiles, generation, ids)
    return live, expired


def _delete_expired(
    conn: sqlite3.Connection, project_id: str, user_ids: Sequence[str], now_ms: int
) -> None:
    conn.executemany(
        "DELETE FROM online_records WHERE project_id = ? AND user_id = ? AND expires_at_ms <= ?",
        [(project_id, user_id, now_ms) for user_id in user_ids],
    )


class SQLiteOnlineStore(OnlineStore):
    """Feature records in a local SQLite file, with TTLs and compare-and-set."""

    def __init__(self, settings: BackendSettings) -> None:
        self._path = store_path(settings)
        self._writer: _Connection | None = None
        self._reader: _Connection | None = None
        self._last_sweep = time.monotonic()

    async def initialize(self) -> None:
        """Creates the file and table if needed; idempotent."""
        if self._writer is None:
            self._writer = _Connection(self._path, "online-store-write")
            self._reader = _Connection(self._path, "online-store-read")
            await self._writer.run(lambda conn: None)

    async def close(self) -> None:
        """Closes both connections; idempotent."""
        for connection in (self._reader, self._writer):
            if connection is not None:
                await connection.close()
        self._reader = self._writer = None

    def _connections(self) -> tuple[_Connection, _Connection]:
        if self._writer is None or self._reader is None:
            raise RuntimeError("SQLiteOnlineStore used before initialize()")
        return self._reader, self._writer

    async def ping(self) -> None:
        """Returns when the file answers a query; raises sqlite3.Error."""
        reader, _ = self._connections()
        await reader.run(lambda conn: conn.execute("SELECT 1").fetchone())

    async def get(
        self, project_id: str, user_id: str, *, with_ids: bool = True
    ) -> StoredRecord | None:
        """Returns the record (without its event ids unless `with_ids`), or None if
        absent or expired."""
        return (await self._records(project_id, [user_id], with_ids))[0]

    async def get_many(self, project_id: str, user_ids: Sequence[str]) -> list[StoredRecord | None]:
        """Returns the records with their event ids in the order of `user_ids` (one query
        per 500 ids)."""
        return await self._records(project_id, user_ids, True)

    async def _records(
        self, project_id: str, user_ids: Sequence[str], with_ids: bool
    ) -> list[StoredRecord | None]:
        rows = await self._rows(project_id, user_ids, with_ids)
        return [
            None
            if (row := rows.get(user_id)) is None
            else StoredRecord(decode_record(row[0], row[2]), row[1])
            for user_id in user_ids
        ]

    async def get_many_mapped(
        self,
        project_id: str,
        user_ids: Sequence[str],
        convert: Callable[[dict[str, Any]], _R],
    ) -> list[_R | None]:
        """Returns `convert(record)` per user id in order (None if absent); each record is
        decoded, converted and dropped before the next."""
        rows = await self._rows(project_id, user_ids, False)
        return [
            None if (row := rows.get(user_id)) is None else convert(decode_record(row[0]))
            for user_id in user_ids
        ]

    async def _rows(
        self, project_id: str, user_ids: Sequence[str], with_ids: bool
    ) -> dict[str, _Row]:
        if not user_ids:
            return {}
        reader, writer = self._connections()
        now_ms = _now_ms()
        live, expired = await reader.run(
            lambda conn: _select(conn, project_id, user_ids, now_ms, with_ids)
        )
        if expired:
            await writer.run(lambda conn: _delete_expired(conn, project_id, expired, now_ms))
        return live

    async def put(
        self,
        project_id: str,
        user_id: str,
        record: dict[str, Any],
        ttl_seconds: int,
        expected_generation: int | None,
    ) -> None:
        """Compare-and-set with the TTL; raises WriteConflict, ValueError for ttl ≤ 0."""
        if ttl_seconds <= 0:
            raise ValueError("ttl_seconds must be positive")
        write = RecordWrite(user_id, record, expected_generation)
        if (await self.put_many(project_id, [write], ttl_seconds))[0] is not None:
            raise _conflict(project_id, user_id, expected_generation)

    async def put_many(
        self, project_id: str, writes: Sequence[RecordWrite], ttl_seconds: int
    ) -> list[WriteConflict | None]:
        """Compare-and-set of each record, all in one transaction (one fsync).

        Returns None or the WriteConflict per write, in order; raises ValueError for
        ttl ≤ 0 and sqlite3.Error, in which case nothing was written."""
        if ttl_seconds <= 0:
            raise ValueError("ttl_seconds must be positive")
        if not writes:
            return []
        _, writer = self._connections()
        # Encoded here, on the event loop, so the writer thread holds the lock briefly.
        payloads = [encode_record(w.record) for w in writes]
        now_ms = _now_ms()
        expires_at_ms = now_ms + ttl_seconds * 1000

        def write_all(conn: sqlite3.Connection) -> list[bool]:
            written: list[bool] = []
            conn.execute("BEGIN IMMEDIATE")
            try:
                for w, (tiles, ids) in zip(writes, payloads, strict=True):
                    if w.expected_generation is None:
                        params: tuple[Any, ...] = (
                            project_id,
                            w.user_id,
                            tiles,
                            expires_at_ms,
                            now_ms,
                            ids,
                        )
                        written.append(conn.execute(_CREATE, params).rowcount == 1)
                    else:
                        params = (
                            project_id,
                            w.user_id,
                            tiles,
                            expires_at_ms,
                            w.expected_generation,
                            now_ms,
                            ids,
                        )
                        written.append(conn.execute(_UPDATE, params).rowcount == 1)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return written

        written = await writer.run(write_all)
        if time.monotonic() - self._last_sweep > _SWEEP_EVERY_S:
            self._last_sweep = time.monotonic()
            await writer.run(
                lambda conn: conn.execute(
                    "DELETE FROM online_records WHERE expires_at_ms <= ?", (_now_ms(),)
                )
            )
        return [
            None if ok else _conflict(project_id, w.user_id, w.expected_generation)
            for w, ok in zip(writes, written, strict=True)
        ]


def _conflict(project_id: str, user_id: str, expected_generation: int | None) -> WriteConflict:
    return WriteConflict(f"{project_id}/{user_id}: generation {expected_generation!r} is stale")
