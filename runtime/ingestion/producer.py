"""Turning accepted events into event-log records, and producing them before any 2xx.

Record key `{project_id}:{user_id}` (one user's events stay in one partition, in order),
value `EventMessage.encode()`. `produce_many` returns only when every record is durable
(Kafka: acks=all, idempotent producer; standalone: fsynced local log) and raises
otherwise; the route answers 2xx only after it returned, so an acknowledged event can
never be missing from the log. A failure becomes 503 `EventLogUnavailable` with
`Retry-After`: the sender retries, nothing is dropped silently. A 503 does not mean
"not stored": a produce abandoned at the deadline may still be delivered (Kafka's
producer keeps retrying the records it holds, e.g. once a stopped broker is back), so
the answer says to retry with the same ids, and compute counts an event id once
(app/tiles/record.py), whichever copies reach the log.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from app.core.errors import EventLogUnavailable
from app.db.event_log import EventLogProducer
from app.db.event_log import EventLogUnavailable as LogDown
from app.schemas.event import EventMessage, record_key
from runtime.ingestion.metrics import IngestionMetrics

logger = logging.getLogger(__name__)

RETRY_AFTER_S = 5


def to_records(messages: Sequence[EventMessage]) -> list[tuple[bytes, bytes]]:
    """Returns the (key, value) records for the messages, in order."""
    return [(record_key(m.project_id, m.user_id), m.encode()) for m in messages]


class EventSink:
    """Produces messages through the process's event log producer."""

    def __init__(
        self, producer: EventLogProducer, metrics: IngestionMetrics, *, timeout_s: float = 30.0
    ) -> None:
        self._producer = producer
        self._metrics = metrics
        self._timeout_s = timeout_s

    async def produce(self, messages: Sequence[EventMessage]) -> None:
        """Returns once every message is durable in the log, within `timeout_s`.

        Raises EventLogUnavailable (503, Retry-After) when the log did not acknowledge
        them all in time; some may still be stored, now or later (compute drops the
        copies a retry adds by event id).
        """
        records = to_records(messages)
        started = time.perf_counter()
        try:
            # The deadline bounds the request whatever the log adapter does (the Kafka
            # one retries its start for longer), so the request's pending claims
            # (INGEST_CLAIM_TTL_SECONDS) always outlive it.
            async with asyncio.timeout(self._timeout_s):
                await self._producer.produce_many(records)
        except (LogDown, TimeoutError) as exc:
            logger.warning(
                "event log unavailable: %s",
                exc if isinstance(exc, LogDown) else f"no answer within {self._timeout_s:g} s",
                extra={"project_id": messages[0].project_id, "records": len(records)},
            )
            raise EventLogUnavailable(
                "The event log did not acknowledge the events in time; they may still "
                "arrive. Retry with the same event_id (or webhook-id): an event that did "
                "arrive is counted once",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            ) from exc
        finally:
            self._metrics.produce_seconds.observe(time.perf_counter() - started)
