"""The online store interface: one record per (project, user) holding feature tiles.

Implementations: Aerospike (namespace `features`, set `{project_id}`, key `{user_id}`),
Redis, and SQLite for standalone. The record is the JSON-compatible dict built by
`app/tiles/record.py`; stores keep it opaque. Writes are compare-and-set on a
generation so two writers can never silently overwrite each other, and always carry
the record TTL (longest window plus one tile).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic_core import PydanticSerializationError, from_json, to_json


class WriteConflict(Exception):
    """The record changed since it was read (generation mismatch); re-read and retry."""


class RecordRejected(ValueError):
    """The store can never take this record as it is (it cannot be encoded, is too
    large, or the server refuses its key, bins or TTL): retrying cannot help.

    Raised by `put`, and by `put_many` for the whole call when one item is refused;
    the caller (compute's writer) then writes the items one by one to find the ones to
    park, so one poisoned record never stalls the others. A ValueError, as the encoding
    errors it replaces were."""


_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class StoredRecord:
    record: dict[str, Any]
    generation: int


@dataclass(frozen=True, slots=True)
class RecordWrite:
    """One item of `put_many`: the arguments `put` takes for one user."""

    user_id: str
    record: dict[str, Any]
    expected_generation: int | None


def encode_record(record: dict[str, Any]) -> bytes:
    """Returns the record as compact UTF-8 JSON (pydantic-core: ~2x `json.dumps`).

    Raises RecordRejected (a ValueError) for a non-finite float, which JSON cannot
    hold (as `json.dumps(allow_nan=False)` does).
    """
    try:
        payload = to_json(record)
    except PydanticSerializationError:
        # Text that is not valid Unicode (a lone surrogate) cannot be UTF-8: json
        # escapes it. Reached only by records no ingestion could have produced.
        return _json_dumps(record)
    # to_json writes a non-finite float as a bare NaN / Infinity token; json.dumps
    # decides whether those letters are such a token or inside a string.
    if b"NaN" in payload or b"Infinity" in payload:
        return _json_dumps(record)
    return payload


def _json_dumps(record: dict[str, Any]) -> bytes:
    try:
        return json.dumps(record, separators=(",", ":"), allow_nan=False).encode()
    except (ValueError, TypeError) as exc:
        raise RecordRejected(f"record cannot be encoded: {exc}") from exc


def decode_record(raw: bytes | str) -> dict[str, Any]:
    """Returns the record of `encode_record`'s JSON (or of `json.dumps`, as older
    versions wrote it). Raises ValueError when `raw` is not JSON."""
    try:
        record: dict[str, Any] = from_json(raw)
    except ValueError:
        # from_json refuses an escaped lone surrogate, which json.dumps may have written.
        record = json.loads(raw)
    return record


class OnlineStore(ABC):
    async def initialize(self) -> None:
        """Connects; idempotent."""

    async def close(self) -> None:
        """Releases connections."""

    @abstractmethod
    async def ping(self) -> None:
        """Returns when the store answers; raises otherwise."""

    @abstractmethod
    async def get(self, project_id: str, user_id: str) -> StoredRecord | None:
        """Returns the user's record, or None if absent or expired."""

    @abstractmethod
    async def get_many(self, project_id: str, user_ids: Sequence[str]) -> list[StoredRecord | None]:
        """Returns the records in the order of `user_ids` (one batch read)."""

    async def get_many_mapped(
        self,
        project_id: str,
        user_ids: Sequence[str],
        convert: Callable[[dict[str, Any]], _T],
    ) -> list[_T | None]:
        """Returns `convert(record)` per user id, in the order of `user_ids` (None for an
        absent record), from one batch read.

        Stores that decode records one by one call `convert` on each as soon as it is
        decoded and drop the record, so a batch never holds all of them at once: 100
        serving records are ~150,000 objects, and holding them made the cyclic GC run
        full collections (measured: 15% of serving CPU). Raises what `get_many` raises,
        and whatever `convert` raises. This default calls `get_many`, then `convert`.
        """
        stored = await self.get_many(project_id, user_ids)
        return [None if s is None else convert(s.record) for s in stored]

    @abstractmethod
    async def put(
        self,
        project_id: str,
        user_id: str,
        record: dict[str, Any],
        ttl_seconds: int,
        expected_generation: int | None,
    ) -> None:
        """Writes the record with the TTL.

        `expected_generation` None means the record must not exist yet; otherwise the
        stored generation must equal it. Raises WriteConflict when it does not, and
        RecordRejected when the store can never take this record.
        """

    async def put_many(
        self, project_id: str, writes: Sequence[RecordWrite], ttl_seconds: int
    ) -> list[WriteConflict | None]:
        """Writes each record as `put` would, in order, all with the same TTL.

        Each write is its own compare-and-set (atomic on its own; the writes are not
        atomic together). Returns, in the order of `writes`, None for a record written
        and the WriteConflict for one refused. Raises ValueError for ttl ≤ 0,
        RecordRejected when any record can never be taken, and the store's own error
        for anything else: then some of the records may have been
        written (as after a failed `put`, a re-read tells). This default calls `put`
        for each; stores override it to use one round trip.
        """
        if ttl_seconds <= 0:
            raise ValueError("ttl_seconds must be positive")
        results: list[WriteConflict | None] = []
        for write in writes:
            try:
                await self.put(
                    project_id, write.user_id, write.record, ttl_seconds, write.expected_generation
                )
            except WriteConflict as conflict:
                results.append(conflict)
            else:
                results.append(None)
        return results
