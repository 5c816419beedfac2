"""The event log interface: Kafka in production, a durable SQLite log in standalone.

Contract (both implementations): `produce*` returns only once the record is durable
(Kafka: acknowledged by all in-sync replicas; local: fsynced), so an HTTP 2xx sent
after it can never lose the event. Records with the same key keep their order in one
partition. Consumers get at-least-once delivery and commit explicitly after their
own write.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


class EventLogUnavailable(Exception):
    """The log could not take the records; nothing of the call may be assumed stored."""


@dataclass(frozen=True, slots=True)
class LogRecord:
    partition: int
    offset: int
    key: bytes
    value: bytes
    timestamp_ms: int


class EventLogProducer(ABC):
    async def start(self) -> None:
        """Connects; idempotent."""

    async def stop(self) -> None:
        """Flushes and disconnects."""

    @abstractmethod
    async def ping(self) -> None:
        """Returns when the log answers; raises otherwise."""

    @abstractmethod
    async def produce_many(self, records: Sequence[tuple[bytes, bytes]]) -> None:
        """Appends (key, value) records durably; raises EventLogUnavailable on failure.

        Either every record is acknowledged or the call raises; a raise may still have
        stored some of them, or store them later (Kafka's producer keeps retrying what it
        holds). Compute drops a second copy by event id (app/tiles/record.py)."""


class EventLogConsumer(ABC):
    """One member of a consumer group."""

    async def start(self) -> None:
        """Joins the group; idempotent."""

    async def stop(self) -> None:
        """Leaves the group without committing anything further."""

    @abstractmethod
    async def getmany(self, max_records: int, timeout_ms: int) -> list[LogRecord]:
        """Returns up to max_records records after the committed position (maybe none)."""

    @abstractmethod
    async def commit(self, next_offsets: Mapping[int, int]) -> None:
        """Commits, per partition, the offset of the next record to read."""

    @abstractmethod
    async def lag(self) -> dict[int, int]:
        """Returns, per assigned partition, how many records are not yet consumed."""

    @abstractmethod
    async def end_offsets(self) -> dict[int, int]:
        """Returns, per assigned partition, the offset the next record written will get
        (empty before the group assigned anything)."""
