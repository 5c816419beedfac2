"""The online store on Aerospike, with the official (synchronous) client 19.x.

Layout: namespace `settings.aerospike_namespace`, ONE set `records`, user key
`{project_id}:{user_id}` with the project id percent-encoded (`record_key`), so no
project id contains the separator and no two (project, user) pairs share a key. Not a
set per project: a namespace holds at most 4,095 sets and a set name at most 63
characters, which would cap the tenants and refuse a 64-character project id the API
accepts. Records of the layout before (set = project id) are not read; they expire by
their TTL.

The record is two bytes bins written by one operation: `record`, the tiles, and `ids`,
the remembered event ids (`codec.encode_record`, as the Redis store does); serving's
reads select `record` only. The store keeps the record opaque, and the client converts
nested maps slowly. Measured on a CE 8.1.2 server, 500 records of ~10 KB in one batch
write: 400-630 ms as map bins (one per top-level key), 100-160 ms as JSON encoding plus
a 20-30 ms write. A record written before the ids had their own bin holds JSON in
`record` and no `ids`: it still reads, and the next write replaces both bins.

Writes carry, always, the TTL in the policy (client 19.1 moved `ttl` from `meta` to
the policy). A write without a TTL would take the namespace `default-ttl`, which is 0
(never expire) in deploy/aerospike/aerospike.conf. The generation check is the
server's: `POLICY_GEN_EQ` with `meta={"gen": expected}` and `POLICY_EXISTS_UPDATE` for
an update, `POLICY_EXISTS_CREATE` for a create. A write replaces the one bin whole.
`put_many` sends every write of a batch in one `batch_write()` (one request per node),
each with its own generation check, and reads each one's result code.

Result codes read as "no record": RecordNotFound (2) on get, and per-key result 2 in
a batch read. Expired records are not found even before nsup removes them: the
server checks the void time on every access. Generation and existence failures on a
write (3, 5, 2) become WriteConflict. Codes that no retry can change (record too big,
a TTL the namespace refuses) become the interface's RecordRejected, as does a record
the codec cannot hold (`encode_record`), so compute parks the record instead of retrying it
forever; everything else (timeouts, cluster errors) propagates as
aerospike.exception.AerospikeError.

The client blocks, so every call runs in a bounded thread pool: the event loop never
waits on the network, and at most `max_workers` calls are in flight.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar
from urllib.parse import quote

import aerospike
from aerospike import exception as aerospike_errors
from aerospike_helpers.batch.records import BatchRecords, Write
from aerospike_helpers.operations import operations

from app.core.settings import BackendSettings
from app.db.online_store import (
    OnlineStore,
    RecordRejected,
    RecordWrite,
    StoredRecord,
    WriteConflict,
)
from app.tiles.codec import decode_record, encode_record

logger = logging.getLogger(__name__)

_T = TypeVar("_T")
RECORD_SET = "records"
RECORD_BIN = "record"
IDS_BIN = "ids"
_RESULT_OK = 0
_RESULT_NOT_FOUND = 2
_RESULT_GENERATION = 3
_RESULT_EXISTS = 5
# What batch_read() and batch_write() report for the whole call when some records
# failed: each record's own result tells which. Any other non-zero code means the call
# itself failed (no node, timeout), and the records' results (left at 0) mean nothing.
_RESULT_BATCH_FAILED = -16  # aerospike.exception.BatchFailed
_CONFLICT_RESULTS = frozenset({_RESULT_NOT_FOUND, _RESULT_GENERATION, _RESULT_EXISTS})
# 4 parameter error, 13 record too big, 21 bin name, 22 forbidden (a TTL write on a
# namespace with nsup-period 0): the same write fails the same way every time.
_REJECTED_RESULTS = frozenset({4, 13, 21, 22})
_DEFAULT_WORKERS = 8
# Start-up: the port opens a second or two before the node accepts requests, so the
# first attempts fail with "Failed to connect"; the pause doubles up to this.
_STARTUP_FIRST_PAUSE_S = 0.1
_STARTUP_MAX_PAUSE_S = 2.0
_CONNECT_TIMEOUT_MS = 1000
# The key start-up reads to learn that the namespace answers. It never exists: every
# record key has a `:` (record_key) and this one has none.
_PROBE_USER = "__startup_probe__"


# The client's exception class per result code (TimeoutError for 9...), for the codes a
# batch reports as numbers: callers then catch the same classes as for single calls.
_ERROR_CLASSES: dict[int, type[aerospike_errors.AerospikeError]] = {
    int(cls.code): cls  # type: ignore[arg-type]  # None is filtered out below
    for cls in vars(aerospike_errors).values()
    if isinstance(cls, type)
    and issubclass(cls, aerospike_errors.AerospikeError)
    and isinstance(getattr(cls, "code", None), int)
}


def result_error(code: int, message: str) -> aerospike_errors.AerospikeError:
    """The client's exception for a result code (AerospikeError for an unknown one)."""
    error = _ERROR_CLASSES.get(code, aerospike_errors.AerospikeError)(code, message)
    error.code, error.msg = code, message
    return error


def _decode(bins: dict[str, Any]) -> dict[str, Any]:
    """The record of a read's bins (`ids` absent when not selected or not written)."""
    return decode_record(bins[RECORD_BIN], bins.get(IDS_BIN))


def parse_hosts(hosts: str) -> list[tuple[str, int]]:
    """`"h1:3000,h2:3000"` → [("h1", 3000), ("h2", 3000)]; the port defaults to 3000."""
    parsed = []
    for item in hosts.split(","):
        host, _, port = item.strip().rpartition(":")
        if not host:
            host, port = port, "3000"
        parsed.append((host, int(port)))
    return parsed


def record_key(project_id: str, user_id: str) -> str:
    """The user key of a record in the `records` set: `{project}:{user}` with the
    project percent-encoded, so the first `:` always ends it."""
    return f"{quote(project_id, safe='')}:{user_id}"


def write_arguments(
    record: dict[str, Any], ttl_seconds: int, expected_generation: int | None
) -> tuple[list[dict[str, Any]], dict[str, Any] | None, dict[str, Any]]:
    """The (operations, meta, policy) of a compare-and-set write, for `operate()` and
    for a batch `Write` alike (the policy keys are common to both)."""
    tiles, ids = encode_record(record)
    # A bin written with nothing would be deleted, which a record without ids is too.
    ops = [operations.write(RECORD_BIN, tiles), operations.write(IDS_BIN, ids or None)]
    policy: dict[str, Any] = {"ttl": ttl_seconds}
    if expected_generation is None:
        policy["exists"] = aerospike.POLICY_EXISTS_CREATE
        return ops, None, policy
    policy["exists"] = aerospike.POLICY_EXISTS_UPDATE
    policy["gen"] = aerospike.POLICY_GEN_EQ
    return ops, {"gen": expected_generation}, policy


def write_outcome(
    project_id: str, write: RecordWrite, result: int, in_doubt: bool
) -> WriteConflict | None:
    """What a batch write's per-record result code means: None for written, the
    WriteConflict for a refused generation or existence check. Raises RecordRejected
    for a code no retry changes, AerospikeError for any other."""
    if result == _RESULT_OK:
        return None
    where = f"{project_id}/{write.user_id}"
    if result in _CONFLICT_RESULTS:
        return WriteConflict(
            f"{where}: generation {write.expected_generation!r} is stale (result {result})"
        )
    if result in _REJECTED_RESULTS:
        raise RecordRejected(f"{where}: the server refuses the record (result {result})")
    raise result_error(result, f"{where}: batch write failed (in doubt: {in_doubt})")


class AerospikeOnlineStore(OnlineStore):
    """Feature records in Aerospike, one record per (project, user)."""

    def __init__(self, settings: BackendSettings, max_workers: int = _DEFAULT_WORKERS) -> None:
        self._hosts = parse_hosts(settings.aerospike_hosts)
        self._namespace = settings.aerospike_namespace
        self._settings = settings
        self._max_workers = max_workers
        self._client: Any = None
        self._executor: ThreadPoolExecutor | None = None

    def client_config(self) -> dict[str, Any]:
        """The configuration `initialize()` builds the client with."""
        s = self._settings
        # Reads are retried (idempotent) when a node stays silent for the socket
        # timeout, within the total. Writes are not: a compare-and-set sent twice whose
        # first attempt landed would come back as a conflict, not as written.
        reads = {"socket_timeout": s.aerospike_socket_timeout_ms, "max_retries": 2}
        writes = {"total_timeout": s.aerospike_write_timeout_ms, "max_retries": 0}
        return {
            "hosts": self._hosts,
            # Policy dictionaries with a misspelt key fail loudly instead of being ignored.
            "validate_keys": True,
            "connect_timeout": _CONNECT_TIMEOUT_MS,
            "max_conns_per_node": self._max_workers * 2,
            "policies": {
                "read": {**reads, "total_timeout": s.aerospike_read_timeout_ms},
                "batch": {**reads, "total_timeout": s.aerospike_batch_read_timeout_ms},
                "operate": writes,
                "batch_parent_write": writes,
            },
        }

    async def initialize(self) -> None:
        """Connects to the cluster and waits until the namespace answers a read,
        retrying with backoff for `aerospike_startup_timeout_s` (a server started with
        this process accepts requests a little later). Idempotent. Raises the last
        aerospike.exception.AerospikeError when the cluster does not answer in time."""
        if self._client is not None:
            return
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self._max_workers, thread_name_prefix="aerospike")
        deadline = time.monotonic() + self._settings.aerospike_startup_timeout_s
        pause = _STARTUP_FIRST_PAUSE_S
        while True:
            try:
                self._client = await self._run(self._connect)
                return
            except aerospike_errors.ParamError:
                raise  # the configuration is wrong: waiting cannot fix it
            except aerospike_errors.AerospikeError as exc:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise
                logger.warning(
                    "Aerospike %s not ready (%s); retrying in %.1f s",
                    self._hosts,
                    exc,
                    min(pause, left),
                )
                await asyncio.sleep(min(pause, left))
                pause = min(pause * 2, _STARTUP_MAX_PAUSE_S)

    def _connect(self) -> Any:
        # Client 19 connects on construction. A node that accepts the connection may
        # not serve the namespace yet: one read of a key that never exists proves it.
        client = aerospike.client(self.client_config())
        try:
            client.exists((self._namespace, RECORD_SET, _PROBE_USER))
        except aerospike_errors.RecordNotFound:
            return client
        except BaseException:
            client.close()
            raise
        return client

    async def close(self) -> None:
        """Closes the client and its threads; idempotent."""
        client, self._client = self._client, None
        if client is not None:
            await self._run(client.close)
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False)

    async def _run(self, fn: Callable[[], _T]) -> _T:
        assert self._executor is not None, "AerospikeOnlineStore used before initialize()"
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    def _key(self, project_id: str, user_id: str) -> tuple[str, str, str]:
        return (self._namespace, RECORD_SET, record_key(project_id, user_id))

    def _started(self) -> Any:
        if self._client is None:
            raise RuntimeError("AerospikeOnlineStore used before initialize()")
        return self._client

    async def ping(self) -> None:
        """Returns when a node answers an info request; raises AerospikeError."""
        client = self._started()
        await self._run(lambda: client.info_random_node("build"))

    async def get(
        self, project_id: str, user_id: str, *, with_ids: bool = True
    ) -> StoredRecord | None:
        """Returns the record (without its event ids unless `with_ids`), or None if
        absent or expired."""
        client = self._started()
        key = self._key(project_id, user_id)
        bins = [RECORD_BIN, IDS_BIN] if with_ids else [RECORD_BIN]

        def read() -> StoredRecord | None:
            try:
                _, meta, found = client.select(key, bins)
            except aerospike_errors.RecordNotFound:
                return None
            return StoredRecord(_decode(found), meta["gen"])

        return await self._run(read)

    async def get_many(self, project_id: str, user_ids: Sequence[str]) -> list[StoredRecord | None]:
        """Returns the records with their event ids in the order of `user_ids` with one
        batch read."""
        found = await self._read_many(project_id, user_ids, [RECORD_BIN, IDS_BIN])
        return [None if item is None else StoredRecord(_decode(item[0]), item[1]) for item in found]

    async def get_many_mapped(
        self,
        project_id: str,
        user_ids: Sequence[str],
        convert: Callable[[dict[str, Any]], _T],
    ) -> list[_T | None]:
        """Returns `convert(record)` per user id in order (None if absent), from one
        batch read of the `record` bin only; each record is decoded, converted and
        dropped before the next."""
        found = await self._read_many(project_id, user_ids, [RECORD_BIN])
        return [None if item is None else convert(_decode(item[0])) for item in found]

    async def _read_many(
        self, project_id: str, user_ids: Sequence[str], bins: list[str]
    ) -> list[tuple[dict[str, Any], int] | None]:
        """Returns (the bins, the generation) per user id in order (None when not found),
        from one batch read of `bins`, still encoded (decoded on the caller's side)."""
        if not user_ids:
            return []
        client = self._started()
        keys = [self._key(project_id, user_id) for user_id in user_ids]

        def read() -> list[tuple[dict[str, Any], int] | None]:
            batch = client.batch_read(keys, bins)
            if batch.result not in (_RESULT_OK, _RESULT_BATCH_FAILED):
                raise result_error(batch.result, f"batch read of {len(keys)} records failed")
            found: list[tuple[dict[str, Any], int] | None] = []
            for item in batch.batch_records:
                if item.result == _RESULT_NOT_FOUND:
                    found.append(None)
                elif item.result != _RESULT_OK:
                    raise result_error(item.result, f"batch read of {item.key} failed")
                else:
                    _, meta, record_bins = item.record
                    found.append((record_bins, meta["gen"]))
            return found

        return await self._run(read)

    async def put(
        self,
        project_id: str,
        user_id: str,
        record: dict[str, Any],
        ttl_seconds: int,
        expected_generation: int | None,
    ) -> None:
        """Compare-and-set through operate() with the TTL; raises WriteConflict,
        ValueError for ttl ≤ 0, RecordRejected (a ValueError) for a record that JSON
        cannot hold or that the server refuses whatever the retry."""
        if ttl_seconds <= 0:
            raise ValueError("ttl_seconds must be positive")
        client = self._started()
        key = self._key(project_id, user_id)
        ops, meta, policy = write_arguments(record, ttl_seconds, expected_generation)

        def write() -> None:
            try:
                if meta is None:
                    client.operate(key, ops, policy=policy)
                else:
                    client.operate(key, ops, meta=meta, policy=policy)
            except (
                aerospike_errors.RecordGenerationError,
                aerospike_errors.RecordExistsError,
                aerospike_errors.RecordNotFound,
            ) as exc:
                raise WriteConflict(
                    f"{project_id}/{user_id}: generation {expected_generation!r} is stale "
                    f"({type(exc).__name__})"
                ) from exc
            except aerospike_errors.ServerError as exc:
                if exc.code in _REJECTED_RESULTS:
                    raise RecordRejected(
                        f"{project_id}/{user_id}: the server refuses the record ({exc.msg})"
                    ) from exc
                raise

        await self._run(write)

    async def put_many(
        self, project_id: str, writes: Sequence[RecordWrite], ttl_seconds: int
    ) -> list[WriteConflict | None]:
        """Writes every record with one batch_write(), each with its own generation
        check. Returns None per record written and its WriteConflict per record refused,
        in the order of `writes`. Raises ValueError for ttl ≤ 0, RecordRejected for a
        record that JSON cannot hold (before anything is sent) or that the server refuses
        whatever the retry, AerospikeError for any other failure; after a server-side
        failure the other records of the call may have been written."""
        if ttl_seconds <= 0:
            raise ValueError("ttl_seconds must be positive")
        if not writes:
            return []
        client = self._started()
        batch = []
        for item in writes:
            ops, meta, policy = write_arguments(item.record, ttl_seconds, item.expected_generation)
            key = self._key(project_id, item.user_id)
            batch.append(Write(key, ops, meta=meta, policy=policy))

        def write() -> list[WriteConflict | None]:
            done = client.batch_write(BatchRecords(batch))
            if done.result not in (_RESULT_OK, _RESULT_BATCH_FAILED):
                raise result_error(done.result, f"batch write of {len(batch)} records failed")
            return [
                write_outcome(project_id, item, record.result, record.in_doubt)
                for item, record in zip(writes, done.batch_records, strict=True)
            ]

        return await self._run(write)
