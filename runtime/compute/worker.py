"""The compute loop: events topic → per-user feature records, with exactly-once effect.

One iteration: `getmany` a batch (more than one fetch under lag: `CATCH_UP_EVENTS`) →
decode → group by (project, user) → one read-apply-write per user (bounded concurrency)
→ only after EVERY write of the batch succeeded, commit the next offset of each
partition → repeat.

Failure rules:

- A store (or config) failure never skips events: the batch is kept in memory and
  retried with backoff until it is stored; nothing is committed meanwhile. Users
  already written in a failed attempt are not written again.
- A crash between a write and the commit redelivers events the record already holds;
  the offsets stored in each record skip them (see `record.py`), so nothing counts twice.
- A record that is not an event message cannot come from our ingestion: it is counted
  (`compute_decode_errors_total`), logged by position only (never its payload) and
  parked in the dead-letter log.
- Poison: events that can never be applied or stored (the writer's `parked`: an
  exception in the pure apply code, or a record the store rejects for good) are sent to
  the dead-letter log with the reason, counted (`compute_events_parked_total`) and
  logged; the rest of the batch is stored and committed. Only a dead-letter log that is
  down keeps the batch (retried like a store outage), so nothing is dropped silently.
- Events of a project with no deployed config are counted as `no_config` and skipped.
  Ingestion only accepts events for deployed configs, so this is the race of an event
  accepted just before its project's config was deleted.
- Specs are looked up per batch from the loader, memoised by version, so a deploy that
  adds, changes or removes a feature applies from the next batch on, without restart.
  An event validated against a newer version than the one held makes the loader poll
  once first, so a deploy's first events are not applied under the previous config.

Stopping: `stop()` lets the in-flight batch finish and commit, then leaves the group.
A batch still waiting for a dead store is abandoned uncommitted (it is redelivered).

The process that runs a worker freezes its start-up heap out of the cyclic GC
(`freeze_long_lived_objects`, called by the process entry points, not by the worker).
"""

from __future__ import annotations

import asyncio
import base64
import gc
import json
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from app.core.consumer_loop import ConsumerLoop, wall_clock_ms
from app.core.settings import ComputeSettings, ServiceSettings
from app.db.event_log import EventLogConsumer, EventLogProducer, LogRecord
from app.schemas.deployment import ConfigSnapshot
from app.schemas.event import EventMessage
from app.tiles.record import AppliedEvent, DedupPolicy
from runtime.compute.metrics import ComputeMetrics
from runtime.compute.specs import ProjectSpecs, SpecCache, event_key
from runtime.compute.writer import FeatureWriter, UserWrite

logger = logging.getLogger(__name__)


_frozen = False
# Young collections every 10,000 container allocations (not 700), a full one after 100
# middle ones (not 10): cycles (asyncio's, exceptions') are still collected, within
# seconds; see `freeze_long_lived_objects`.
GC_THRESHOLDS = (10_000, 10, 100)


def freeze_long_lived_objects() -> None:
    """Moves what the process holds once it has started (modules, schemas,
    clients: ~85,000 objects) out of the cyclic GC's reach, once per process.

    A batch keeps a few hundred user records alive while it is applied and written, so
    the GC runs a full collection every batch or two, and each one used to walk that
    whole start-up heap (~25 ms): 20-25% of the worker's time at 40k events, 0.3 s ->
    0.1 s of GC with the freeze. Garbage is collected first, so nothing dead is frozen;
    frozen objects are still freed by reference counting.

    The collector is also made to run less often (`GC_THRESHOLDS`): a batch decodes its
    users' records (~2,000 containers each on the serving mix) and keeps them alive
    until they are written, so at the default (700, 10, 10) a full collection ran every
    ~70,000 allocations and walked all of them again; records are trees, freed by
    reference counting, so those passes found nothing. Measured on the serving mix (300
    users, batches of 2,000 events decoded, applied and encoded as the writer does, no
    I/O): 190-218 -> 154-167 us of CPU per event.
    """
    global _frozen
    if not _frozen:
        _frozen = True
        gc.collect()
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)


# Under lag a batch grows past one fetch (up to this many times `max_batch_messages`
# events) while it holds fewer than `max_batch_messages` users (one record each, read,
# applied and written once a batch: what the writer holds in memory), taking at most a
# quarter of that per extra fetch. A user's record is then decoded and encoded once for
# all of the user's events in the backlog instead of once per fetch: on the serving mix
# with 300 users (6,000 events, one batch instead of three) 30% less CPU an event. A
# backlog of many users gains nothing and keeps batches of the usual size. Not more:
# a batch's time is mostly its users' records (~0.5 ms each) plus ~60 µs an event, and
# a member busy with a batch rejoins a rebalance only after it (10 s allowed), so 5x
# the events makes the longest batch ~1.5x, not 5x, what it was.
CATCH_UP_EVENTS = 5
CATCH_UP_FETCH = 4


class SnapshotSource(Protocol):
    """What the worker needs of the config loader (`app.core.config_loader.ConfigLoader`)."""

    async def get(self, project_id: str) -> ConfigSnapshot | None: ...

    async def poll(self) -> None: ...


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    """Tuning of the loop; `from_settings` reads them from ComputeSettings."""

    max_batch_messages: int = 2000
    poll_timeout_ms: int = 200
    write_concurrency: int = 64
    retry_first_s: float = 0.2
    retry_max_s: float = 10.0
    # consumer.lag() may cost a broker round trip: refreshed at most this often.
    lag_refresh_s: float = 1.0
    dedup: DedupPolicy = field(default_factory=DedupPolicy)

    @classmethod
    def from_settings(cls, settings: ServiceSettings) -> WorkerOptions:
        """Returns the options of a ComputeSettings; defaults for any other process
        (the standalone process runs the worker with its own settings class)."""
        if not isinstance(settings, ComputeSettings):
            return cls()
        return cls(
            max_batch_messages=settings.max_batch_messages,
            poll_timeout_ms=settings.poll_timeout_ms,
            write_concurrency=settings.write_concurrency,
            dedup=DedupPolicy(
                horizon_ms=settings.dedup_horizon_seconds * 1000,
                max_ids=settings.dedup_max_ids,
            ),
        )


@dataclass(frozen=True, slots=True)
class _Decoded:
    record: LogRecord
    message: EventMessage


@dataclass(slots=True)
class _BatchCounts:
    applied: int = 0
    duplicates: int = 0
    duplicate_ids: int = 0
    forgotten_ids: int = 0
    late: int = 0
    future: int = 0
    no_config: int = 0
    without_features: int = 0


def dead_letter_entry(record: LogRecord, reason: str) -> tuple[bytes, bytes]:
    """Returns the (key, value) parked in the dead-letter log for `record`: the reason,
    where it was read, and the original value (as text, or base64 when not UTF-8), so
    an operator can fix the cause and produce it again."""
    entry: dict[str, object] = {
        "reason": reason,
        "partition": record.partition,
        "offset": record.offset,
        "timestamp_ms": record.timestamp_ms,
    }
    try:
        entry["value"] = record.value.decode()
    except UnicodeDecodeError:
        entry["value_b64"] = base64.b64encode(record.value).decode()
    return record.key, json.dumps(entry, separators=(",", ":")).encode()


class ComputeWorker(ConsumerLoop):
    """Consumes the event log into the online store until stopped."""

    def __init__(
        self,
        consumer: EventLogConsumer,
        writer: FeatureWriter,
        configs: SnapshotSource,
        *,
        metrics: ComputeMetrics,
        options: WorkerOptions | None = None,
        dead_letter: EventLogProducer | None = None,
    ) -> None:
        self._options = options or WorkerOptions()
        super().__init__(consumer, self._options, metrics)
        # None: parked events are only logged and counted (tests of other behaviours).
        self._dead_letter = dead_letter
        self._writer = writer
        self._configs = configs
        self._metrics = metrics
        self._specs = SpecCache()

    # -- one batch -----------------------------------------------------------------------
    async def _fetch(self) -> list[LogRecord]:
        """Returns the next batch: one fetch, or, under lag (that fetch came back full),
        more of what the consumer already holds while the batch has fewer than
        `max_batch_messages` users (see CATCH_UP_EVENTS)."""
        records = await super()._fetch()
        limit = self._options.max_batch_messages
        if len(records) < limit:
            return records
        users = {record.key for record in records}
        step = max(limit // CATCH_UP_FETCH, 1)
        while len(users) < limit and len(records) < limit * CATCH_UP_EVENTS:
            try:
                more = await self._consumer.getmany(step, 0)
            except Exception:  # the next fetch reports it; these records are processed
                break
            if not more:
                break
            records += more
            users.update(record.key for record in more)
        return records

    async def process(self, records: Sequence[LogRecord]) -> bool:
        """Stores the effect of `records`, then commits past them.

        Returns True once committed (or the commit failed after the write, which is
        harmless), False when stopped before the batch could be stored.
        """
        events, undecodable = self._decode(records)
        decoded = [_Decoded(record, message) for record, message in events]
        done: dict[tuple[str, str], UserWrite] = {}
        parked_sent: set[tuple[str, str]] = set()

        async def store() -> _BatchCounts:
            nonlocal undecodable
            if undecodable:
                # Already counted as decode errors; parked so they can be inspected.
                await self._park("NotAnEventMessage", undecodable, count=False)
                undecodable = []
            return await self._apply(decoded, done, parked_sent)

        def failed(exc: Exception, delay: float) -> None:
            self._metrics.batch_retries.inc()
            logger.warning(
                "batch not stored; retrying",
                exc_info=exc,
                extra={"records": len(records), "retry_s": round(delay, 2)},
            )

        stored, counts = await self._until_stored(store, failed)
        if not stored or counts is None:
            return False
        self._count(counts)
        # A commit that fails after the write is harmless: the stored offsets and event
        # ids skip the redelivered records, and the next commit moves past them anyway.
        await self._commit(records)
        return True

    async def _park(self, reason: str, records: Sequence[LogRecord], *, count: bool = True) -> None:
        """Sends `records` to the dead-letter log with `reason`, counts (unless counted
        elsewhere) and logs them. Raises what the log raises (the caller retries)."""
        if self._dead_letter is not None:
            await self._dead_letter.produce_many([dead_letter_entry(r, reason) for r in records])
        if count:
            kind = reason.split(":", 1)[0]  # the exception's name: a bounded label set
            self._metrics.events_parked.labels(reason=kind).inc(len(records))
        logger.error(
            "events parked in the dead-letter log",
            extra={
                "reason": reason,
                "events": len(records),
                "first": f"{records[0].partition}:{records[0].offset}",
            },
        )

    async def _apply(
        self,
        decoded: Sequence[_Decoded],
        done: dict[tuple[str, str], UserWrite],
        parked_sent: set[tuple[str, str]],
    ) -> _BatchCounts:
        by_project: dict[str, dict[str, list[_Decoded]]] = defaultdict(lambda: defaultdict(list))
        for item in decoded:
            by_project[item.message.project_id][item.message.user_id].append(item)

        counts = _BatchCounts()
        jobs = []
        for project_id, users in by_project.items():
            specs = await self._project_specs(project_id, users)
            if specs is None:
                counts.no_config += sum(len(items) for items in users.values())
                continue
            if specs.ttl_seconds is None:
                counts.without_features += sum(len(items) for items in users.values())
            jobs.append(self._write(project_id, specs, users, done))
        results = await asyncio.gather(*jobs, return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]
        for key, write in done.items():
            if write.parked is not None and key not in parked_sent:
                await self._park(write.parked, [i.record for i in by_project[key[0]][key[1]]])
                parked_sent.add(key)
        stored_ms = wall_clock_ms()
        for project_id, users in by_project.items():
            oldest = min(i.message.received_at_ms for items in users.values() for i in items)
            delay = max(stored_ms - oldest, 0) / 1000
            self._metrics.project_delay.labels(project_id=project_id).set(delay)
        for write in done.values():
            counts.applied += write.applied
            counts.duplicates += write.duplicates
            counts.duplicate_ids += write.duplicate_ids
            counts.forgotten_ids += write.forgotten_ids
            counts.late += write.late
            counts.future += write.future
        return counts

    async def _project_specs(
        self, project_id: str, users: dict[str, list[_Decoded]]
    ) -> ProjectSpecs | None:
        """Returns the project's specs, or None when it has no deployed config.
        Raises ConfigUnavailable (retried by the caller) when the config can't be read."""
        snapshot = await self._configs.get(project_id)
        newest = max(item.message.version for items in users.values() for item in items)
        if snapshot is None or snapshot.version < newest:
            # Behind ingestion: pick the deploy up now rather than up to a poll later.
            await self._configs.poll()
            snapshot = await self._configs.get(project_id)
        if snapshot is None:
            self._specs.forget(project_id)
            return None
        specs, built = self._specs.get(snapshot)
        if built and specs.invalid:
            self._metrics.invalid_features.inc(len(specs.invalid))
            for bad in specs.invalid:
                logger.error(
                    "deployed feature cannot run; skipped",
                    extra={"project_id": project_id, "feature": bad.name, "reason": bad.reason},
                )
        return specs

    async def _write(
        self,
        project_id: str,
        specs: ProjectSpecs,
        users: dict[str, list[_Decoded]],
        done: dict[tuple[str, str], UserWrite],
    ) -> None:
        pending = {
            user_id: [
                AppliedEvent(
                    partition=i.record.partition,
                    offset=i.record.offset,
                    event=event_key(i.message.pipeline_id, i.message.event),
                    t_ms=i.message.event_time_ms,
                    properties=i.message.properties,
                    event_id=i.message.event_id,
                )
                for i in items
            ]
            for user_id, items in users.items()
            if (project_id, user_id) not in done
        }
        if not pending:
            return
        written: dict[str, UserWrite] = {}
        try:
            await self._writer.write_project(project_id, specs, pending, written)
        finally:
            for user_id, write in written.items():
                done[(project_id, user_id)] = write

    def _count(self, counts: _BatchCounts) -> None:
        m = self._metrics
        m.events_applied.inc(counts.applied)
        m.events_duplicate.inc(counts.duplicates)
        m.events_duplicate_id.inc(counts.duplicate_ids)
        m.dedup_ids_forgotten.inc(counts.forgotten_ids)
        m.events_late.inc(counts.late)
        m.events_future.inc(counts.future)
        m.events_no_config.inc(counts.no_config)
        m.events_without_features.inc(counts.without_features)
