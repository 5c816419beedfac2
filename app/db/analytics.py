"""The optional analytics sink: raw events into ClickHouse (server or embedded chDB)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class AnalyticsEvent:
    project_id: str
    pipeline_id: str
    user_id: str
    event: str
    event_id: str
    event_time_ms: int
    received_at_ms: int
    properties: dict[str, Any]


class AnalyticsSink(ABC):
    async def initialize(self) -> None:
        """Creates the table if needed; idempotent."""

    async def close(self) -> None:
        """Releases connections."""

    @abstractmethod
    async def ping(self) -> None:
        """Returns when the sink answers; raises otherwise."""

    @abstractmethod
    async def insert(self, events: Sequence[AnalyticsEvent]) -> None:
        """Inserts one batch; raises on failure (the caller retries, it never blocks
        feature computation)."""

    @abstractmethod
    async def count_events(self, project_id: str) -> int:
        """Returns how many events the project has stored (tests and diagnostics)."""
