"""Rebuild: every record of a project recomputed from the event archive, safely beside
a running compute.

What is done where. ClickHouse does the aggregation, every aggregation and filter:
per feature, one query (one scan for all its windows) per chunk of users returns the
partial of every (user, window, tile) the window can still read at `now`
(`ArchiveFeatures.fill`, `app/db/archive_sql.py`). Python only turns the rows into the
record layout compute writes (`app/tiles/record.py`) under the fingerprints compute uses
(`runtime/compute/specs.build_specs`), so serving merges the rebuilt tiles with the same
code, and the features equal the oracle's; and writes each chunk's records with one
`put_many`. Users go in keyset-paged chunks of `chunk_users` (each query a range of the
archive's sorting key, so no query scans more than its chunk's users), so memory is
bounded by a chunk's tiles whatever the archive holds.

Safe against live compute writes, without stopping it. The archive stores where each
event sat in the log (partition, offset), and a partition's events are archived in
log order, so the archive holds every event of a partition up to its highest archived
offset A_p. For each user, with C the record compute wrote (C_p its last applied
offset in partition p) and X_p the user's highest archived offset:

- C_p <= A_p: every event C holds is archived, so the rebuilt record R has all of
  them, and maybe newer ones compute has not applied yet. R takes offsets X_p (>= C_p):
  when compute reaches those events it skips them by offset (record.py's first layer),
  and the ids of events received within the dedup horizon are added to R's event-id
  memory, so a later second copy in the log is dropped too (the second layer).
- C_p > A_p: compute is ahead of the archive for this partition; R would lose what
  only C has. The user is deferred (counted; run the rebuild again once the archive
  caught up: its lag is on `/archive`).
- A_p is read before the chunk's queries and X_p after them, so an event archived
  while they ran (X_p > A_p) may be in one answer and not another: deferred too.
- R is written with a compare-and-set on C's generation: a compute write in between
  makes the put fail, and the user is re-read and merged again (`MAX_ATTEMPTS`).

Events older than the retention are gone from the archive; a rebuild then serves less
than compute had for windows longer than it (retention is at least the longest window).
The same holds for an archive started after the events: the rule above trusts it to
hold each partition's whole log up to A_p, so an archive added to a running platform
must have run for the longest window (or have been filled from the topic's start)
before a rebuild replaces what compute holds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from app.db.clickhouse import ClickHouseClientSink
from app.db.history import ArchiveHistory
from app.db.online_store import OnlineStore, RecordWrite, StoredRecord
from app.schemas.deployment import ConfigSnapshot
from app.services.archive_features import ArchiveFeatures, source_of
from app.tiles.record import DedupPolicy, add_ids, id_hash, kept_ids, remembered
from runtime.compute.specs import ProjectSpecs, build_specs

logger = logging.getLogger(__name__)

# Users per chunk: one query per feature covers them all.
CHUNK_USERS = 2_000
# Compare-and-set attempts per user before it counts as deferred.
MAX_ATTEMPTS = 5


@dataclass(slots=True)
class RebuildReport:
    """What one project's rebuild did."""

    project_id: str
    version: int
    users: int = 0
    written: int = 0
    deferred: int = 0
    deferred_users: list[str] = field(default_factory=list)


def merge_ids(
    stored: Mapping[str, str] | None, recent: Sequence[str], now_ms: int, dedup: DedupPolicy
) -> dict[str, str]:
    """Returns the record's event-id memory: the stored buckets still inside the horizon,
    plus the hashes of `recent` archived ids not yet remembered, in the bucket of
    `now_ms`; the oldest are dropped beyond `dedup.max_ids` (compute's own rules)."""
    ids = kept_ids(stored, now_ms, dedup)
    seen = remembered(ids)
    new = [h for h in dict.fromkeys(id_hash(i) for i in recent) if h not in seen]
    add_ids(ids, new, now_ms, dedup)
    return ids


class RebuildService:
    """Rebuilds records from the archive into an online store."""

    def __init__(
        self,
        archive: ClickHouseClientSink,
        store: OnlineStore,
        *,
        now_ms: Callable[[], int],
        dedup: DedupPolicy | None = None,
        chunk_users: int = CHUNK_USERS,
    ) -> None:
        self._history = ArchiveHistory(archive)
        self._features = ArchiveFeatures(self._history)
        self._archive = archive
        self._store = store
        self._now_ms = now_ms
        self._dedup = dedup or DedupPolicy()
        self._chunk_users = chunk_users

    async def projects(self) -> list[str]:
        """Returns every project the archive holds events of."""
        return await self._history.projects()

    async def rebuild(self, snapshot: ConfigSnapshot) -> RebuildReport:
        """Rebuilds every archived user of `snapshot`'s project under that config.

        Returns the report (users seen, records written, users deferred because compute
        is ahead of the archive or kept winning the compare-and-set). Raises what the
        archive or the store raise; a rebuild stopped half-way leaves every record it
        wrote consistent, and running it again is harmless.
        """
        specs = build_specs(snapshot)
        report = RebuildReport(snapshot.project_id, snapshot.version)
        if specs.ttl_seconds is None or not specs.specs:
            # No per-user feature: nothing to rebuild (per-entity and user x entity
            # features are compute's alone: `app/tiles/entities.py`).
            return report
        after: str | None = None
        while (after := await self.rebuild_page(specs, after, report)) is not None:
            logger.info(
                "rebuild progress",
                extra={"project_id": snapshot.project_id, "users": report.users},
            )
        return report

    async def user_count(self, project_id: str) -> int:
        """Returns how many users the archive holds events of (a rebuild's total)."""
        return await self._history.user_count(project_id)

    async def rebuild_page(
        self, specs: ProjectSpecs, after: str | None, report: RebuildReport
    ) -> str | None:
        """Rebuilds the next `chunk_users` archived users after `after` (in id order)
        under `specs` (with a TTL), counted in `report`. Returns the last of them, where
        the next page starts, or None when no user is left."""
        users = await self._history.user_page(specs.project_id, after, self._chunk_users)
        if not users:
            return None
        report.users += len(users)
        await self._rebuild_chunk(specs, users, report)
        return users[-1]

    async def rebuild_users(
        self, specs: ProjectSpecs, users: Sequence[str], report: RebuildReport
    ) -> None:
        """Rebuilds `users` (in id order, e.g. ones deferred before), as `rebuild_page`."""
        for start in range(0, len(users), self._chunk_users):
            chunk = list(users[start : start + self._chunk_users])
            report.users += len(chunk)
            await self._rebuild_chunk(specs, chunk, report)

    async def _rebuild_chunk(
        self, specs: ProjectSpecs, users: Sequence[str], report: RebuildReport
    ) -> None:
        project_id, first, last = specs.project_id, users[0], users[-1]
        now_ms = self._now_ms()
        # The archive keeps inserting while these queries run. Its positions are read
        # first: every event up to them is visible to the queries after. The user's
        # offsets are read last: a user with an event past the positions may have been
        # read by one query and not another, and is deferred (`_record`).
        positions = await self._archive.positions()
        features = await self._features.fill(project_id, specs.specs, first, last, now_ms)
        recent = await self._history.recent_ids(
            project_id, first, last, now_ms - self._dedup.horizon_ms, self._dedup.max_ids
        )
        earliest = min(w.tile_range(now_ms)[0] * w.tile_ms for s in specs.specs for w in s.windows)
        last_event = await self._history.last_event_ms(
            project_id, [source_of(s) for s in specs.specs], first, last, earliest
        )
        offsets = await self._history.user_offsets(project_id, first, last)
        pending = list(users)
        ttl = specs.ttl_seconds
        assert ttl is not None
        for _attempt in range(MAX_ATTEMPTS):
            if not pending:
                return
            current = await self._store.get_many(project_id, pending)
            writes: list[RecordWrite] = []
            for user, stored in zip(pending, current, strict=True):
                record = self._record(
                    stored,
                    features.get(user, {}),
                    offsets.get(user, {}),
                    recent.get(user, []),
                    last_event.get(user, 0),
                    positions,
                    now_ms,
                )
                if record is None:
                    report.deferred += 1
                    report.deferred_users.append(user)
                    continue
                generation = stored.generation if stored is not None else None
                writes.append(RecordWrite(user, record, generation))
            outcomes = await self._store.put_many(project_id, writes, ttl) if writes else []
            report.written += sum(1 for o in outcomes if o is None)
            pending = [w.user_id for w, o in zip(writes, outcomes, strict=True) if o is not None]
        report.deferred += len(pending)
        report.deferred_users.extend(pending)

    def _record(
        self,
        stored: StoredRecord | None,
        features: dict[str, Any],
        archived_offsets: Mapping[int, int],
        recent: Sequence[str],
        last_event_ms: int,
        positions: Mapping[int, int],
        now_ms: int,
    ) -> dict[str, Any] | None:
        """Returns the rebuilt record, or None when compute is ahead of `positions` (the
        archive as the chunk's queries saw it) or the archive went past them."""
        current = stored.record if stored is not None else {}
        offsets: dict[str, int] = {}
        for partition, applied in current.get("offsets", {}).items():
            if applied > positions.get(int(partition), -1):
                return None  # events only compute has: wait for the archive
            offsets[partition] = applied
        for partition, offset in archived_offsets.items():
            if offset > positions.get(partition, -1):
                return None  # archived while the chunk was read: read it again later
            offsets[str(partition)] = max(offsets.get(str(partition), -1), offset)
        rebuilt = {
            "features": features,
            "offsets": offsets,
            "ids": merge_ids(current.get("ids"), recent, now_ms, self._dedup),
            "updated_ms": now_ms,
            "last_event_ms": max(last_event_ms, 0),
        }
        if "pairs" in current:
            # User x entity features are not rebuilt from the archive: kept as compute
            # wrote them (the offsets above cover them, so dropping them would lose them).
            rebuilt["pairs"] = current["pairs"]
        return rebuilt
