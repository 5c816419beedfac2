"""The online store interface: one record per (project, user) holding feature tiles.

Implementations: Aerospike, Redis, and SQLite for standalone. The record is the
JSON-compatible dict built by `app/tiles/record.py`; stores keep it opaque, as the two
blobs of `app/tiles/codec.py`: the tiles, and the remembered event ids. Both are written
by the same compare-and-set (exactly-once needs the ids and the tiles they counted to
change together); serving's reads (`get(..., with_ids=False)`, `get_many_mapped`) fetch
the tiles only. Writes are compare-and-set on a generation so two writers can never
silently overwrite each other, and always carry the record TTL (longest window plus one
tile).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from app.tiles.codec import RecordRejected

__all__ = ["OnlineStore", "RecordRejected", "RecordWrite", "StoredRecord", "WriteConflict"]


class WriteConflict(Exception):
    """The record changed since it was read (generation mismatch); re-read and retry."""


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


class OnlineStore(ABC):
    async def initialize(self) -> None:
        """Connects; idempotent."""

    async def close(self) -> None:
        """Releases connections."""

    @abstractmethod
    async def ping(self) -> None:
        """Returns when the store answers; raises otherwise."""

    @abstractmethod
    async def get(
        self, project_id: str, user_id: str, *, with_ids: bool = True
    ) -> StoredRecord | None:
        """Returns the user's record, or None if absent or expired.

        With `with_ids` False (serving) the event ids are not fetched: the record has
        no "ids" (one stored before they were split off keeps its own). Never write
        such a record back: it would forget them."""

    @abstractmethod
    async def get_many(self, project_id: str, user_ids: Sequence[str]) -> list[StoredRecord | None]:
        """Returns the records, event ids included, in the order of `user_ids` (one
        batch read)."""

    async def get_many_mapped(
        self,
        project_id: str,
        user_ids: Sequence[str],
        convert: Callable[[dict[str, Any]], _T],
    ) -> list[_T | None]:
        """Returns `convert(record)` per user id, in the order of `user_ids` (None for an
        absent record), from one batch read. The records are read as `get(...,
        with_ids=False)` reads them: serving's read, without the event ids.

        Stores that decode records one by one call `convert` on each as soon as it is
        decoded and drop the record, so a batch never holds all of them at once: 100
        serving records are ~150,000 objects, and holding them made the cyclic GC run
        full collections (measured: 15% of serving CPU). Raises what `get_many` raises,
        and whatever `convert` raises. This default calls `get_many`, then `convert` on
        each record without its ids."""
        stored = await self.get_many(project_id, user_ids)
        return [None if s is None else convert(_without_ids(s.record)) for s in stored]

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


def _without_ids(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != "ids"} if "ids" in record else record
