"""Writing user records: read, apply the batch's events, compare-and-set put.

`FeatureWriter` works over any `OnlineStore` (Aerospike, Redis, SQLite; the plan's
`aerospike_writer.py`, renamed for what it does): it only uses the interface's
`get_many`/`get`/`put_many`/`put` with a generation check. A batch's users are read
with one `get_many` and written with one `put_many` (one round trip on Redis and
SQLite); only users whose compare-and-set failed go through `put` one by one.

Why compare-and-set: a user's events all live in one partition, so normally one
consumer writes a user's record. During a consumer-group rebalance two consumers can
briefly hold the same partition; the generation check makes the slower one re-read
and re-apply instead of overwriting, and the offsets stored in the record make the
re-apply skip what the faster one already applied.

Poison isolation: what retrying cannot fix is parked, not retried. Applying events is
pure code, so an exception there fails the same way every time; a store's
RecordRejected (a record it can never take: too large, not encodable, a key or TTL the
server refuses) likewise. Either way that user's events come back as a UserWrite with
`parked` set to the reason and nothing written for that user; the worker sends them to
the dead-letter log and the batch goes on. A put_many refused as a whole is split into
one put per user to find the record to park.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from app.db.online_store import (
    OnlineStore,
    RecordRejected,
    RecordWrite,
    StoredRecord,
    WriteConflict,
)
from app.tiles.entities import PairApplier
from app.tiles.record import AppliedEvent, BatchApplier, DedupPolicy
from runtime.compute.entity_writer import EntityWriter
from runtime.compute.metrics import ComputeMetrics
from runtime.compute.specs import ProjectSpecs

# Users read per get_many: a few round trips for a batch of the default size, each
# decoding at most this many records in one go (decoding 2000 records of 50 features
# blocked the event loop for ~1.6 s), while a very large batch never turns into one
# unbounded request.
PREFETCH_CHUNK = 500
# Users written per put_many (one round trip): records are ~10 KB, so a call carries a
# few MB at most.
WRITE_CHUNK = 500
# The longest the writer applies events without letting the event loop run. Applying is
# pure CPU: a 2000-event batch of 50 features x 5 windows took 4-8 s on a loaded 2-core
# machine, during which aiokafka could not heartbeat; past the session timeout (6 s) the
# group dropped the worker, its commit failed and the batch came back (measured: 158
# events/s, a rebalance every batch). Yielding this often keeps heartbeats on time.
MAX_BLOCKING_S = 0.02
# Attempts per user before the batch fails (and is retried as a whole, with backoff).
MAX_ATTEMPTS = 8
# Projects whose BatchApplier is kept between batches; past it the cache starts over.
MAX_CACHED_APPLIERS = 1024


@dataclass(frozen=True, slots=True)
class UserWrite:
    """What one user's write did. `fresh` lists the indexes (into the events given) of
    events the record had not applied before: the ones to forward to analytics.
    `parked` is the reason when none of the user's events could be applied or stored
    (nothing was written; the caller parks them)."""

    applied: int
    duplicates: int
    late: int
    future: int
    fresh: tuple[int, ...]
    duplicate_ids: int = 0
    forgotten_ids: int = 0
    parked: str | None = None


def parked(exc: BaseException) -> UserWrite:
    """Returns the UserWrite of a user whose events are parked because of `exc`."""
    return UserWrite(0, 0, 0, 0, (), parked=f"{type(exc).__name__}: {exc}"[:500])


class FeatureWriter:
    """Applies events to user records in any OnlineStore, with bounded concurrency."""

    def __init__(
        self,
        store: OnlineStore,
        *,
        now_ms: Callable[[], int],
        metrics: ComputeMetrics | None = None,
        concurrency: int = 64,
        max_attempts: int = MAX_ATTEMPTS,
        dedup: DedupPolicy | None = None,
    ) -> None:
        self._store = store
        self._dedup = dedup or DedupPolicy()
        self._now_ms = now_ms
        self._metrics = metrics
        self._limit = asyncio.Semaphore(concurrency)
        self._max_attempts = max_attempts
        # Per project: the applier of its current specs, reused while `now` stays inside
        # one tile of every window (a few seconds at least), so window ranges and
        # per-spec work are done once for many users, not per user and event.
        self._appliers: dict[str, BatchApplier] = {}
        self._pair_appliers: dict[str, PairApplier] = {}
        # Per-entity records (a product's), written before the user records of a batch.
        self._entities = EntityWriter(
            store, now_ms=now_ms, metrics=metrics, max_attempts=max_attempts
        )

    def _pair_applier(self, project_id: str, specs: ProjectSpecs, now_ms: int) -> PairApplier:
        applier = self._pair_appliers.get(project_id)
        if (
            applier is None
            or applier.specs is not specs.pairs_by_event
            or not (applier.covers(now_ms))
        ):
            if len(self._pair_appliers) >= MAX_CACHED_APPLIERS:
                self._pair_appliers.clear()
            applier = PairApplier(specs.pairs_by_event, now_ms)
            self._pair_appliers[project_id] = applier
        return applier

    def _applier(self, project_id: str, specs: ProjectSpecs, now_ms: int) -> BatchApplier:
        applier = self._appliers.get(project_id)
        if (
            applier is None
            or applier.specs_by_event is not specs.by_event
            or not applier.covers(now_ms)
        ):
            if len(self._appliers) >= MAX_CACHED_APPLIERS:
                self._appliers.clear()
            applier = self._appliers[project_id] = BatchApplier(
                specs.by_event, now_ms, dedup=self._dedup, keyed_events=specs.keyed_events
            )
        return applier

    async def write_project(
        self,
        project_id: str,
        specs: ProjectSpecs,
        events_by_user: Mapping[str, Sequence[AppliedEvent]],
        written: dict[str, UserWrite] | None = None,
    ) -> dict[str, UserWrite]:
        """Applies each user's events (in the given order) to the user's record.

        Returns a UserWrite per user, also put into `written` (when given) as each user
        completes. Records are read with `get_many` and written with `put_many`, a few
        thousand users per call; a user whose compare-and-set fails is re-read and
        re-applied on its own (`write_user`). If a store call fails, or a user still
        conflicts after `max_attempts`, the first error is raised (after every
        conflicting user was attempted) and `written` tells which users are done.
        Retrying the same events is harmless anyway: the stored offsets skip what was
        applied.

        A project without features stores nothing: its users get `applied=0` and every
        event `fresh` (still forwarded to analytics).
        """
        out = written if written is not None else {}
        users = list(events_by_user)
        if specs.ttl_seconds is None:
            for user, events in events_by_user.items():
                out[user] = UserWrite(0, 0, 0, 0, tuple(range(len(events))))
            return out
        current: dict[str, StoredRecord | None] = {}
        for start in range(0, len(users), PREFETCH_CHUNK):
            chunk = users[start : start + PREFETCH_CHUNK]
            current.update(zip(chunk, await self._store.get_many(project_id, chunk), strict=True))

        prepared = [
            await self._prepare_chunk(
                project_id, specs, users[start : start + WRITE_CHUNK], events_by_user, current, out
            )
            for start in range(0, len(users), WRITE_CHUNK)
        ]
        if specs.entities:
            # Entity records first: see entity_writer.py for why this order is exact.
            fresh = [
                events_by_user[write.user_id][i]
                for pending in prepared
                for write, done in pending
                for i in done.fresh
            ]
            await self._entities.write(project_id, specs, fresh)
        conflicts: list[tuple[str, Exception]] = []
        for pending in prepared:
            conflicts += await self._put_chunk(project_id, specs.ttl_seconds, pending, out)
        # Another writer changed these records since they were read (a rebalance gave
        # both consumers the partition): each is re-read and re-applied on its own.
        results = await asyncio.gather(
            *(
                self._rewrite_limited(project_id, u, specs, events_by_user[u], conflict, out)
                for u, conflict in conflicts
            ),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return out

    async def _prepare_chunk(
        self,
        project_id: str,
        specs: ProjectSpecs,
        users: Sequence[str],
        events_by_user: Mapping[str, Sequence[AppliedEvent]],
        current: Mapping[str, StoredRecord | None],
        out: dict[str, UserWrite],
    ) -> list[tuple[RecordWrite, UserWrite]]:
        """Applies the events of `users`; returns the records to write (users with
        nothing to write, or whose events are parked, go straight into `out`)."""
        pending: list[tuple[RecordWrite, UserWrite]] = []
        ran_since = time.perf_counter()
        for user_id in users:
            if time.perf_counter() - ran_since > MAX_BLOCKING_S:
                await asyncio.sleep(0)  # heartbeats and other tasks run
                ran_since = time.perf_counter()
            stored = current[user_id]
            before = stored.record if stored is not None else None
            try:
                result, done = self._apply(
                    project_id, specs, events_by_user[user_id], before, owned=True
                )
            except Exception as exc:  # pure code: these events fail the same way every time
                out[user_id] = parked(exc)
                continue
            if result is None:
                out[user_id] = done
                continue
            generation = stored.generation if stored is not None else None
            pending.append((RecordWrite(user_id, result, generation), done))
        return pending

    async def _put_chunk(
        self,
        project_id: str,
        ttl_seconds: int,
        pending: Sequence[tuple[RecordWrite, UserWrite]],
        out: dict[str, UserWrite],
    ) -> list[tuple[str, Exception]]:
        """Writes the prepared records with one `put_many`; returns the users to write
        one by one (a conflict, or a put_many refused as a whole) with the reason."""
        if not pending:
            return []
        started = time.perf_counter()
        try:
            outcomes = await self._store.put_many(
                project_id, [write for write, _ in pending], ttl_seconds
            )
        except RecordRejected as rejected:
            # Some record here can never be stored: one put each finds it (and parks
            # only its user); the others are written as usual.
            return [(write.user_id, rejected) for write, _ in pending]
        finally:
            if self._metrics is not None:
                # Every write of the call took the call's time (one round trip).
                elapsed = time.perf_counter() - started
                for _ in pending:
                    self._metrics.store_write_seconds.observe(elapsed)
        conflicts: list[tuple[str, Exception]] = []
        for (write, done), conflict in zip(pending, outcomes, strict=True):
            if conflict is None:
                out[write.user_id] = done
                continue
            if self._metrics is not None:
                self._metrics.store_conflicts.inc()
            conflicts.append((write.user_id, conflict))
        return conflicts

    async def _rewrite_limited(
        self,
        project_id: str,
        user_id: str,
        specs: ProjectSpecs,
        events: Sequence[AppliedEvent],
        conflict: Exception,
        out: dict[str, UserWrite],
    ) -> None:
        # After a conflict the put_many was the first attempt; a rejected put_many
        # attempted nothing for this user.
        attempts = self._max_attempts - int(isinstance(conflict, WriteConflict))
        if attempts < 1:
            raise conflict
        async with self._limit:
            current = await self._store.get(project_id, user_id)
            out[user_id] = await self._write(
                project_id, user_id, specs, events, current, attempts, owned=True
            )

    def _apply(
        self,
        project_id: str,
        specs: ProjectSpecs,
        events: Sequence[AppliedEvent],
        before: dict[str, Any] | None,
        *,
        owned: bool,
    ) -> tuple[dict[str, Any] | None, UserWrite]:
        """Returns (the record to write, None when there is nothing to write; the
        UserWrite once it is written). `owned`: `before` was read from the store for
        this one apply (a conflict or a retry reads it again), so it is updated in
        place instead of copied (`BatchApplier.apply`)."""
        now_ms = self._now_ms()
        applier = self._applier(project_id, specs, now_ms)
        result = applier.apply(before, events, now_ms, owned=owned)
        fresh = result.fresh
        if not specs.pairs:
            result.record.pop("pairs", None)  # a redeploy removed the last of them
        elif fresh:
            pairs = self._pair_applier(project_id, specs, now_ms).apply(
                result.record.get("pairs"), [events[i] for i in fresh], now_ms
            )
            if pairs.pairs:
                result.record["pairs"] = pairs.pairs
            else:
                result.record.pop("pairs", None)
            if pairs.newest_ms > result.record.get("last_event_ms", 0):
                result.record["last_event_ms"] = pairs.newest_ms  # the answer's freshness
            if pairs.dropped and self._metrics is not None:
                self._metrics.pair_keys_dropped.inc(pairs.dropped)
        if not fresh:
            # Everything was applied before (a redelivery after a crash between the
            # write and the commit, or second copies of applied events): writing would
            # change nothing but the TTL.
            return None, UserWrite(0, result.skipped_duplicate, 0, 0, (), result.duplicate_ids)
        done = UserWrite(
            result.applied,
            result.skipped_duplicate,
            result.late,
            result.future,
            fresh,
            result.duplicate_ids,
            result.forgotten_ids,
        )
        return result.record, done

    async def write_user(
        self,
        project_id: str,
        user_id: str,
        specs: ProjectSpecs,
        events: Sequence[AppliedEvent],
        current: StoredRecord | None,
    ) -> UserWrite:
        """Applies `events` to `current` (the record as last read; None if absent) and
        writes the result with the record TTL, re-reading and re-applying on a
        generation conflict.

        Returns the UserWrite (`parked` set when the events cannot be applied or the
        store rejects the record). Raises WriteConflict after `max_attempts` conflicts,
        ValueError when `specs` has no feature (no TTL), and whatever the store raises.
        """
        return await self._write(
            project_id, user_id, specs, events, current, self._max_attempts, owned=False
        )

    async def _write(
        self,
        project_id: str,
        user_id: str,
        specs: ProjectSpecs,
        events: Sequence[AppliedEvent],
        current: StoredRecord | None,
        attempts: int,
        *,
        owned: bool,
    ) -> UserWrite:
        if specs.ttl_seconds is None:
            raise ValueError(f"project {project_id} has no feature: nothing to write")
        for attempt in range(1, attempts + 1):
            before = current.record if current is not None else None
            try:
                # The caller's record is copied; a record read here again is owned.
                record, done = self._apply(
                    project_id, specs, events, before, owned=owned or attempt > 1
                )
            except Exception as exc:  # pure code: these events fail the same way every time
                return parked(exc)
            if record is None:
                return done
            if specs.entities:
                await self._entities.write(project_id, specs, [events[i] for i in done.fresh])
            started = time.perf_counter()
            try:
                await self._store.put(
                    project_id,
                    user_id,
                    record,
                    specs.ttl_seconds,
                    current.generation if current is not None else None,
                )
            except WriteConflict:
                if self._metrics is not None:
                    self._metrics.store_conflicts.inc()
                if attempt == attempts:
                    raise
                current = await self._store.get(project_id, user_id)
                continue
            except RecordRejected as rejected:
                return parked(rejected)
            finally:
                if self._metrics is not None:
                    self._metrics.store_write_seconds.observe(time.perf_counter() - started)
            return done
        raise AssertionError("unreachable: the last attempt returns or raises")
