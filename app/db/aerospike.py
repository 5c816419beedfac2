"""The online store on Aerospike, with the official (synchronous) client 19.x.

Layout: namespace `settings.aerospike_namespace`, set = project id, key = user id.
Each top-level key of the record is one bin (`features` and `offsets` are map bins,
`updated_ms` an integer); bin names are limited to 15 bytes, so feature names live
inside the `features` map, never in bin names.

Writes go through `operate()` with, always, the TTL in the policy (client 19.1 moved
`ttl` from `meta` to the policy). A write without a TTL would take the namespace
`default-ttl`, which is 0 (never expire) in deploy/aerospike/aerospike.conf. The
generation check is the server's: `POLICY_GEN_EQ` with `meta={"gen": expected}` and
`POLICY_EXISTS_UPDATE` for an update, `POLICY_EXISTS_CREATE` for a create. A write
sets every bin the record carries and removes none, so a top-level key dropped from
a record would keep its old bin: the compute record always has the same keys.

Result codes read as "no record": RecordNotFound (2) on get, and per-key result 2 in
a batch read. Expired records are not found even before nsup removes them: the
server checks the void time on every access. Generation and existence failures on a
write become WriteConflict; everything else (timeouts, cluster errors) propagates as
aerospike.exception.AerospikeError.

The client blocks, so every call runs in a bounded thread pool: the event loop never
waits on the network, and at most `max_workers` calls are in flight.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import aerospike
from aerospike import exception as aerospike_errors
from aerospike_helpers.operations import operations

from app.core.settings import BackendSettings
from app.db.online_store import OnlineStore, StoredRecord, WriteConflict

_T = TypeVar("_T")
MAX_BIN_NAME_BYTES = 15
_RESULT_OK = 0
_RESULT_NOT_FOUND = 2
_DEFAULT_WORKERS = 8
_READ_TIMEOUT_MS = 1000
_WRITE_TIMEOUT_MS = 2000
_BATCH_TIMEOUT_MS = 3000


def parse_hosts(hosts: str) -> list[tuple[str, int]]:
    """`"h1:3000,h2:3000"` → [("h1", 3000), ("h2", 3000)]; the port defaults to 3000."""
    parsed = []
    for item in hosts.split(","):
        host, _, port = item.strip().rpartition(":")
        if not host:
            host, port = port, "3000"
        parsed.append((host, int(port)))
    return parsed


def record_to_bins(record: dict[str, Any]) -> dict[str, Any]:
    """Returns the bins of a record; ValueError for an empty record or a key that is
    not a bin name (a non-empty string of at most 15 bytes)."""
    if not record:
        raise ValueError("an Aerospike record needs at least one bin")
    for name in record:
        if not isinstance(name, str) or not 0 < len(name.encode()) <= MAX_BIN_NAME_BYTES:
            raise ValueError(f"record key {name!r} is not a valid bin name (1-15 bytes)")
    return record


def write_arguments(
    record: dict[str, Any], ttl_seconds: int, expected_generation: int | None
) -> tuple[list[dict[str, Any]], dict[str, Any] | None, dict[str, Any]]:
    """The (operations, meta, policy) of `operate()` for a compare-and-set write."""
    ops = [operations.write(name, value) for name, value in record_to_bins(record).items()]
    policy: dict[str, Any] = {"ttl": ttl_seconds}
    if expected_generation is None:
        policy["exists"] = aerospike.POLICY_EXISTS_CREATE
        return ops, None, policy
    policy["exists"] = aerospike.POLICY_EXISTS_UPDATE
    policy["gen"] = aerospike.POLICY_GEN_EQ
    return ops, {"gen": expected_generation}, policy


class AerospikeOnlineStore(OnlineStore):
    """Feature records in Aerospike, one record per (project, user)."""

    def __init__(self, settings: BackendSettings, max_workers: int = _DEFAULT_WORKERS) -> None:
        self._hosts = parse_hosts(settings.aerospike_hosts)
        self._namespace = settings.aerospike_namespace
        self._max_workers = max_workers
        self._client: Any = None
        self._executor: ThreadPoolExecutor | None = None

    def client_config(self) -> dict[str, Any]:
        """The configuration `initialize()` builds the client with."""
        return {
            "hosts": self._hosts,
            # Policy dictionaries with a misspelt key fail loudly instead of being ignored.
            "validate_keys": True,
            # Booleans inside records come back as booleans, not 0/1 (server ≥ 5.6).
            "send_bool_as": aerospike.AS_BOOL,
            "connect_timeout": 2000,
            "max_conns_per_node": self._max_workers * 2,
            "policies": {
                "read": {"total_timeout": _READ_TIMEOUT_MS, "max_retries": 2},
                "operate": {"total_timeout": _WRITE_TIMEOUT_MS},
                "batch": {"total_timeout": _BATCH_TIMEOUT_MS, "max_retries": 2},
            },
        }

    async def initialize(self) -> None:
        """Connects to the cluster (client 19 connects on construction); idempotent.
        Raises aerospike.exception.AerospikeError when no seed host answers."""
        if self._client is not None:
            return
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self._max_workers, thread_name_prefix="aerospike")
        config = self.client_config()
        self._client = await self._run(lambda: aerospike.client(config))

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
        return (self._namespace, project_id, user_id)

    def _started(self) -> Any:
        if self._client is None:
            raise RuntimeError("AerospikeOnlineStore used before initialize()")
        return self._client

    async def ping(self) -> None:
        """Returns when a node answers an info request; raises AerospikeError."""
        client = self._started()
        await self._run(lambda: client.info_random_node("build"))

    async def get(self, project_id: str, user_id: str) -> StoredRecord | None:
        """Returns the record, or None if absent or expired."""
        client = self._started()
        key = self._key(project_id, user_id)

        def read() -> StoredRecord | None:
            try:
                _, meta, bins = client.get(key)
            except aerospike_errors.RecordNotFound:
                return None
            return StoredRecord(record=dict(bins), generation=meta["gen"])

        return await self._run(read)

    async def get_many(self, project_id: str, user_ids: Sequence[str]) -> list[StoredRecord | None]:
        """Returns the records in the order of `user_ids` with one batch read."""
        if not user_ids:
            return []
        client = self._started()
        keys = [self._key(project_id, user_id) for user_id in user_ids]

        def read() -> list[StoredRecord | None]:
            batch = client.batch_read(keys)
            found: list[StoredRecord | None] = []
            for item in batch.batch_records:
                if item.result == _RESULT_NOT_FOUND:
                    found.append(None)
                elif item.result != _RESULT_OK:
                    raise aerospike_errors.AerospikeError(
                        item.result, f"batch read of {item.key} failed with result {item.result}"
                    )
                else:
                    _, meta, bins = item.record
                    found.append(StoredRecord(record=dict(bins), generation=meta["gen"]))
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
        ValueError for ttl ≤ 0 or a record that cannot be bins."""
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

        await self._run(write)
