"""The archive loop: events topic → event archive, every accepted event exactly once.

It is its own consumer group (ARCHIVE_CONSUMER_GROUP), so it reads every record
whatever compute does, and it replaces compute's old best-effort forwarder (a bounded
queue that dropped the oldest events when the sink lagged, and lost what was queued
when compute died): a history that may miss events can back no rebuild, backfill or
training set, and archiving inside compute would tie feature latency to ClickHouse.

One iteration: `getmany` → decode → one INSERT of the batch → commit the next offset of
each partition → repeat. At least once into the table, exactly once as read:

- an insert that fails (or times out after the server stored it) is retried with the
  same batch, with backoff, and nothing is committed meanwhile;
- a crash between the insert and the commit redelivers the batch, inserted again;
- a second copy of an event in the log (a producer retry) is another row;
and the table keeps one row per (project, user, event_id) (`app/db/clickhouse.py`).

Records that are not event messages are counted and skipped: they were never accepted
events (compute parks them in the dead-letter topic).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from app.core.consumer_loop import ConsumerLoop
from app.db.analytics import AnalyticsEvent, AnalyticsSink
from app.db.event_log import EventLogConsumer, LogRecord
from app.schemas.event import EventMessage
from runtime.archive.metrics import ArchiveMetrics

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ArchiveOptions:
    max_batch_messages: int = 10_000
    poll_timeout_ms: int = 500
    retry_first_s: float = 0.2
    retry_max_s: float = 10.0
    lag_refresh_s: float = 1.0


def archived(record: LogRecord, message: EventMessage) -> AnalyticsEvent:
    """Returns the archive row of one event record."""
    return AnalyticsEvent(
        project_id=message.project_id,
        pipeline_id=message.pipeline_id,
        user_id=message.user_id,
        event=message.event,
        event_id=message.event_id,
        event_time_ms=message.event_time_ms,
        received_at_ms=message.received_at_ms,
        properties=message.properties,
        log_partition=record.partition,
        log_offset=record.offset,
    )


class ArchiveWorker(ConsumerLoop):
    """Consumes the event log into the archive until stopped."""

    def __init__(
        self,
        consumer: EventLogConsumer,
        archive: AnalyticsSink,
        *,
        metrics: ArchiveMetrics,
        options: ArchiveOptions | None = None,
    ) -> None:
        super().__init__(consumer, options or ArchiveOptions(), metrics)
        self._archive = archive
        self._metrics = metrics

    async def log_ends(self) -> dict[int, int]:
        """Returns the event log's end offset of each partition this worker holds (what a
        backfill waits for the archive to reach); empty before it holds any."""
        return await self._consumer.end_offsets()

    async def process(self, records: Sequence[LogRecord]) -> bool:
        """Inserts `records`, then commits past them. Returns False when stopped before
        the insert succeeded (nothing committed: the batch comes again)."""
        events, _ = self._decode(records)  # not events: never accepted, nothing to archive
        rows = [archived(record, message) for record, message in events]

        def failed(exc: Exception, delay: float) -> None:
            self._metrics.insert_failures.inc()
            logger.warning(
                "archive insert failed; retrying",
                exc_info=exc,
                extra={"records": len(records), "retry_s": round(delay, 2)},
            )

        through: dict[int, int] = {}
        for record in records:
            through[record.partition] = max(through.get(record.partition, -1), record.offset)
        stored, _ = await self._until_stored(lambda: self._archive.insert(rows, through), failed)
        if not stored:
            return False
        self._metrics.events_archived.inc(len(rows))
        # A commit that fails after the insert is harmless: the redelivered batch is
        # inserted again and the table keeps one row per event.
        await self._commit(records)
        return True
