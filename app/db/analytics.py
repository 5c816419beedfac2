"""The event archive interface: every accepted event, once (ClickHouse or chDB).

The backend kind is still called `analytics` in settings (`ANALYTICS=none|clickhouse|
chdb`): the table it holds is the lossless archive that rebuilds, training sets and
ad-hoc analytics all read (see `app/db/clickhouse.py`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class AnalyticsEvent:
    """One archived event, and where it sat in the events topic (partition, offset)."""

    project_id: str
    pipeline_id: str
    user_id: str
    event: str
    event_id: str
    event_time_ms: int
    received_at_ms: int
    properties: dict[str, Any]
    log_partition: int = 0
    log_offset: int = 0


class AnalyticsSink(ABC):
    async def initialize(self) -> None:
        """Creates the table if needed; idempotent."""

    async def close(self) -> None:
        """Releases connections."""

    @abstractmethod
    async def ping(self) -> None:
        """Returns when the archive answers; raises otherwise."""

    @abstractmethod
    async def insert(
        self, events: Sequence[AnalyticsEvent], through: Mapping[int, int] | None = None
    ) -> None:
        """Inserts one batch; raises on failure (the caller retries the same batch, and
        an event inserted twice is stored once). `through`: the highest offset per
        partition the batch covers, events or not, which `positions` then reports."""

    @abstractmethod
    async def count_events(self, project_id: str) -> int:
        """Returns how many distinct events the project has archived."""

    @abstractmethod
    async def positions(self) -> dict[int, int]:
        """Returns, per events-topic partition, the highest offset archived."""
