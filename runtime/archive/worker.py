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

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from pydantic import ValidationError

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


@dataclass(slots=True)
class ArchiveState:
    """What /ready and /consumer report."""

    consumer_started: bool = False
    batches_committed: int = 0
    last_commit_ms: int | None = None
    retrying: bool = False
    last_error: str | None = None
    lag: dict[int, int] = field(default_factory=dict)


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


class ArchiveWorker:
    """Consumes the event log into the archive until stopped."""

    def __init__(
        self,
        consumer: EventLogConsumer,
        archive: AnalyticsSink,
        *,
        metrics: ArchiveMetrics,
        options: ArchiveOptions | None = None,
    ) -> None:
        self._consumer = consumer
        self._archive = archive
        self._metrics = metrics
        self._options = options or ArchiveOptions()
        self._stopping = asyncio.Event()
        self._last_lag_refresh = 0.0
        self._lag_task: asyncio.Task[None] | None = None
        self.state = ArchiveState()

    async def run(self) -> None:
        """Joins the group (retrying while the log is down) and archives batches until
        `stop()`; leaves the group on the way out."""
        try:
            if not await self._start_consumer():
                return
            while not self._stopping.is_set():
                records = await self._fetch()
                self._refresh_lag()
                if records:
                    await self.process(records)
        finally:
            if self._lag_task is not None:
                self._lag_task.cancel()
                with contextlib.suppress(BaseException):
                    await self._lag_task
            with contextlib.suppress(Exception):
                await self._consumer.stop()
            self.state.consumer_started = False

    def stop(self) -> None:
        """Asks the loop to leave after the in-flight batch (returns at once)."""
        self._stopping.set()

    async def process(self, records: Sequence[LogRecord]) -> bool:
        """Inserts `records`, then commits past them. Returns False when stopped before
        the insert succeeded (nothing committed: the batch comes again)."""
        rows = self._decode(records)
        delay = self._options.retry_first_s
        while True:
            try:
                await self._archive.insert(rows)
                break
            except Exception as exc:  # any failure: keep the batch, never skip it
                self._metrics.insert_failures.inc()
                self.state.retrying = True
                self.state.last_error = type(exc).__name__
                logger.warning(
                    "archive insert failed; retrying",
                    exc_info=exc,
                    extra={"records": len(records), "retry_s": round(delay, 2)},
                )
                if await self._sleep_unless_stopped(delay * random.uniform(0.5, 1.0)):
                    return False
                delay = min(delay * 2, self._options.retry_max_s)
        self.state.retrying = False
        self.state.last_error = None
        self._metrics.events_archived.inc(len(rows))
        await self._commit(records)
        return True

    def _decode(self, records: Sequence[LogRecord]) -> list[AnalyticsEvent]:
        rows: list[AnalyticsEvent] = []
        for record in records:
            try:
                message = EventMessage.decode(record.value)
            except (ValidationError, ValueError):
                self._metrics.decode_errors.inc()
                # Position only: the payload is untrusted and may hold personal data.
                logger.error(
                    "skipping a record that is not an event message",
                    extra={"partition": record.partition, "offset": record.offset},
                )
                continue
            rows.append(archived(record, message))
        return rows

    async def _commit(self, records: Sequence[LogRecord]) -> None:
        next_offsets: dict[int, int] = {}
        for record in records:
            next_offsets[record.partition] = max(
                next_offsets.get(record.partition, 0), record.offset + 1
            )
        try:
            await self._consumer.commit(next_offsets)
        except Exception as exc:
            # Inserted already: the redelivered batch is inserted again and stored once.
            self._metrics.commit_failures.inc()
            logger.warning("archive offset commit failed after the insert", exc_info=exc)
            return
        self._metrics.batches.inc()
        self.state.batches_committed += 1
        self.state.last_commit_ms = time.time_ns() // 1_000_000

    async def _start_consumer(self) -> bool:
        delay = self._options.retry_first_s
        while not self._stopping.is_set():
            try:
                await self._consumer.start()
            except Exception as exc:
                self.state.last_error = type(exc).__name__
                logger.warning("event log unavailable at start; retrying", exc_info=exc)
                if await self._sleep_unless_stopped(delay):
                    return False
                delay = min(delay * 2, self._options.retry_max_s)
                continue
            self.state.consumer_started = True
            self.state.last_error = None
            return True
        return False

    async def _fetch(self) -> list[LogRecord]:
        try:
            return await self._consumer.getmany(
                self._options.max_batch_messages, self._options.poll_timeout_ms
            )
        except Exception as exc:
            self.state.last_error = type(exc).__name__
            logger.warning("event log read failed; retrying", exc_info=exc)
            await self._sleep_unless_stopped(self._options.retry_first_s)
            return []

    def _refresh_lag(self) -> None:
        # In the background, as compute does: the offsets request can queue behind the
        # consumer's long-poll fetch on the broker connection (hundreds of ms).
        now = time.monotonic()
        if now - self._last_lag_refresh < self._options.lag_refresh_s:
            return
        if self._lag_task is not None and not self._lag_task.done():
            return
        self._last_lag_refresh = now
        self._lag_task = asyncio.create_task(self._read_lag())

    async def _read_lag(self) -> None:
        try:
            lag = await self._consumer.lag()
        except Exception as exc:  # diagnostics only
            logger.debug("archive consumer lag unavailable: %r", exc)
            return
        self.state.lag = dict(lag)
        self._metrics.set_lag(lag)

    async def _sleep_unless_stopped(self, seconds: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)
        return self._stopping.is_set()
