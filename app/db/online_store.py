"""The online store interface: one record per (project, user) holding feature tiles.

Implementations: Aerospike (namespace `features`, set `{project_id}`, key `{user_id}`),
Redis, and SQLite for standalone. The record is the JSON-compatible dict built by
`runtime/compute/record.py`; stores keep it opaque. Writes are compare-and-set on a
generation so two writers can never silently overwrite each other, and always carry
the record TTL (longest window plus one tile).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


class WriteConflict(Exception):
    """The record changed since it was read (generation mismatch); re-read and retry."""


@dataclass(frozen=True, slots=True)
class StoredRecord:
    record: dict[str, Any]
    generation: int


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
        stored generation must equal it. Raises WriteConflict when it does not.
        """
