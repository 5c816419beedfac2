"""Forwarding applied events to the optional analytics sink, off the feature path.

Analytics is best-effort while features are exact: the worker hands events to a
bounded in-memory queue and moves on; a separate task drains it in batches. A sink
that fails or is slow makes the queue lag (and retries with exponential backoff); it
never blocks, slows or fails feature computation. What can be lost, by design:

- the oldest queued events when the queue is full (`analytics_dropped_total`);
- whatever is still queued when the process dies (a clean stop flushes what it can
  within `close(timeout_s)`).

Only events new to their user's record are forwarded, so a Kafka redelivery the
record skips is not sent again. Duplicates remain possible (an insert that timed out
after the server stored it is retried; events of a project without any feature have
no record to dedup against): readers that need exact counts dedup on `event_id`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import Iterable

from app.db.analytics import AnalyticsEvent, AnalyticsSink
from runtime.compute.metrics import ComputeMetrics

logger = logging.getLogger(__name__)

_BACKOFF_FIRST_S = 0.5
_BACKOFF_MAX_S = 30.0


class AnalyticsForwarder:
    """A bounded queue in front of an AnalyticsSink, drained by its own task."""

    def __init__(
        self,
        sink: AnalyticsSink,
        metrics: ComputeMetrics,
        *,
        max_queue: int = 100_000,
        batch_size: int = 1_000,
        idle_wait_s: float = 0.2,
    ) -> None:
        self._sink = sink
        self._metrics = metrics
        self._queue: deque[AnalyticsEvent] = deque()
        self._max_queue = max_queue
        self._batch_size = batch_size
        self._idle_wait_s = idle_wait_s
        self._wakeup = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    @property
    def queued(self) -> int:
        """Returns how many events wait for the sink."""
        return len(self._queue)

    def offer(self, events: Iterable[AnalyticsEvent]) -> None:
        """Queues events without waiting; drops the oldest ones beyond `max_queue`."""
        dropped = 0
        for event in events:
            if len(self._queue) >= self._max_queue:
                self._queue.popleft()
                dropped += 1
            self._queue.append(event)
        if dropped:
            self._metrics.analytics_dropped.inc(dropped)
        self._metrics.analytics_queue.set(len(self._queue))
        self._wakeup.set()

    def start(self) -> None:
        """Starts the draining task (idempotent)."""
        if self._task is None:
            self._task = asyncio.create_task(self._drain(), name="analytics-forwarder")

    async def close(self, timeout_s: float = 5.0) -> None:
        """Flushes what the sink takes within `timeout_s`, then stops the task."""
        self._closing = True
        self._wakeup.set()
        task, self._task = self._task, None
        if task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout_s)
        except TimeoutError:
            logger.warning("analytics queue not flushed at stop", extra={"queued": self.queued})
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _drain(self) -> None:
        backoff = _BACKOFF_FIRST_S
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), self._idle_wait_s)
                continue
            batch = [self._queue[i] for i in range(min(self._batch_size, len(self._queue)))]
            try:
                await self._sink.insert(batch)
            except Exception as exc:  # any sink failure: keep the events, retry later
                self._metrics.analytics_failures.inc()
                logger.warning(
                    "analytics insert failed; retrying",
                    extra={"error": type(exc).__name__, "queued": self.queued, "retry_s": backoff},
                )
                if self._closing:
                    return  # a failing sink does not hold up the stop
                await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
                backoff = min(backoff * 2, _BACKOFF_MAX_S)
                continue
            backoff = _BACKOFF_FIRST_S
            self._remove_sent(batch)
            self._metrics.analytics_inserted.inc(len(batch))
            self._metrics.analytics_queue.set(len(self._queue))

    def _remove_sent(self, batch: list[AnalyticsEvent]) -> None:
        # The batch was read from the left of the queue without removing it (a failed
        # insert keeps it). While the insert was awaited, `offer` may have dropped some
        # of it from the left; the survivors are still at the left, in order, so
        # popping while the head belongs to the batch removes exactly what was sent.
        sent = {id(e) for e in batch}
        while self._queue and id(self._queue[0]) in sent:
            self._queue.popleft()
