"""Writing per-entity records (a product's features): one compare-and-set write per
entity id per batch, from any number of compute workers.

A product's events come from every user, so from every partition, and two workers
holding different partitions write the same record. Exactly-once effect holds with
three parts, none of them new:

- Offsets per partition in the entity record. Each partition is read in order by one
  consumer at a time, and the worker writes every record of a batch before it commits
  the batch's offsets, so an event at or below the stored offset of its partition was
  applied: a redelivery after a crash skips it. Each worker advances only the offsets
  of its own partitions, so the two never undo each other.
- Compare-and-set on the record's generation. Two workers writing one product at once:
  the second is refused, re-reads (now holding the first one's events and offsets),
  re-applies and writes again, at most `max_attempts` times per batch, then the batch
  fails and is retried whole, with backoff, by the consumer loop.
- The user's record decides duplicates (two copies of one event id, e.g. a client retry
  past ingestion's dedup). Both copies carry the same user, so the same partition and
  the same user record, which remembers the ids it applied (`DedupPolicy`). The worker
  passes here only the events the user's record found new, and writes the entity
  records BEFORE the user records: should it die in between, the redelivered events
  are still new to the user records, and the entity records skip them by offset.
  Remembering ids in the entity record instead would cost a hot product
  `COMPUTE_DEDUP_MAX_IDS` ids (~213 KB) rewritten on every batch, and forget copies
  past that cap.

A rebalance that briefly gives one partition to two workers is covered: each reads the
partition in order from the committed offset, so the first copy of an id reaches a
worker's user record (its own write, or the other's, re-read after a conflict) before
the second copy does, and events both apply are skipped by the entity's offsets. Known
limit: after the topic's partition count grows, a user's two copies can sit on two
partitions; two workers judging them at the same moment from one user record may both
pass a copy to the entity records (the user's own features still count it once, as
their compare-and-set re-reads).

A hot product never stalls the stream: its events of a whole batch, from any number
of users, are applied in one pass and written with one put (no write per event), and
all of a batch's entity records of one kind go in one `put_many`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from app.db.online_store import OnlineStore, RecordWrite, WriteConflict
from app.tiles.entities import entity_scope, group_by_entity, store_id
from app.tiles.record import AppliedEvent, BatchApplier
from runtime.compute.metrics import ComputeMetrics
from runtime.compute.specs import EntitySpecs, ProjectSpecs

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 8


class EntityWriter:
    """Applies the events new to their users' records to per-entity records."""

    def __init__(
        self,
        store: OnlineStore,
        *,
        now_ms: Callable[[], int],
        metrics: ComputeMetrics | None = None,
        max_attempts: int = MAX_ATTEMPTS,
    ) -> None:
        self._store = store
        self._now_ms = now_ms
        self._metrics = metrics
        self._max_attempts = max_attempts
        # (project, entity) -> the applier of its specs, reused while it covers now.
        self._appliers: dict[tuple[str, str], BatchApplier] = {}

    def _applier(self, project_id: str, entity: EntitySpecs, now_ms: int) -> BatchApplier:
        key = (project_id, entity.entity)
        applier = self._appliers.get(key)
        if (
            applier is None
            or applier.specs_by_event is not entity.by_event
            or not (applier.covers(now_ms))
        ):
            if len(self._appliers) >= 1024:
                self._appliers.clear()
            applier = self._appliers[key] = BatchApplier(entity.by_event, now_ms)
        return applier

    async def write(
        self, project_id: str, specs: ProjectSpecs, events: Sequence[AppliedEvent]
    ) -> None:
        """Applies `events` (new to their users' records; any order across partitions)
        to the records of every entity they name, one write per entity id.

        Raises WriteConflict after `max_attempts` refused writes of one record, and
        whatever the store raises; calling again with the same events is harmless (the
        offsets stored in each record skip what was applied).
        """
        for entity in specs.entities.values():
            groups = group_by_entity(events, entity.key_by_event)
            if groups:
                await self._write_entity(project_id, entity, groups)

    async def _write_entity(
        self, project_id: str, entity: EntitySpecs, groups: dict[str, list[AppliedEvent]]
    ) -> None:
        scope = entity_scope(project_id, entity.entity)
        pending = {store_id(entity_id): events for entity_id, events in groups.items()}
        for _ in range(self._max_attempts):
            keys = list(pending)
            current = await self._store.get_many(scope, keys)
            now_ms = self._now_ms()
            applier = self._applier(project_id, entity, now_ms)
            writes: list[RecordWrite] = []
            for key, stored in zip(keys, current, strict=True):
                try:
                    result = applier.apply(
                        stored.record if stored is not None else None, pending[key], now_ms
                    )
                except Exception:  # pure code: it would fail the same way on every retry
                    logger.exception(
                        "entity events cannot be applied; skipped",
                        extra={"project_id": project_id, "entity": entity.entity, "id": key},
                    )
                    continue
                if not result.fresh:
                    continue  # every event was applied before (a redelivery)
                generation = stored.generation if stored is not None else None
                writes.append(RecordWrite(key, result.record, generation))
            if not writes:
                return
            outcomes = await self._store.put_many(scope, writes, entity.ttl_seconds)
            refused = [w.user_id for w, conflict in zip(writes, outcomes, strict=True) if conflict]
            if self._metrics is not None:
                self._metrics.entity_writes.inc(len(writes) - len(refused))
                self._metrics.entity_conflicts.inc(len(refused))
            if not refused:
                return
            # Another worker wrote these since they were read: re-read and re-apply.
            pending = {key: pending[key] for key in refused}
        raise WriteConflict(
            f"{scope}: {len(pending)} record(s) still changed by another writer after "
            f"{self._max_attempts} attempts"
        )
