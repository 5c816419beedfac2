"""The per-user record: applying Kafka batches with exactly-once effect, and serving.

A record is plain JSON-compatible data, kept opaque by the online stores (stored as
`codec.encode_record` lays it out):

    {
      "features": {feature name: {"fp": spec fingerprint, "w": FeatureState}},
      "offsets": {str(partition): last applied offset},
      "ids": {str(apply-time bucket): base64 of the 8-byte hashes of applied event_ids},
      "updated_ms": now_ms of the last apply,
      "last_event_ms": event time of the newest event applied to a feature (0: none),
    }

Exactly-once effect on at-least-once delivery, in two layers, both checked and
written in the same compare-and-set put as the tiles:

1. Offsets (replays). Compute writes the record, then commits the Kafka offset. A
   crash in between redelivers events the record already holds; their offsets are at
   or below the stored one and are skipped. This needs all of a user's events on one
   partition in offset order, which the event key `{project_id}:{user_id}` gives.
2. Event ids (the same event produced twice: a broker outage after a 503 whose records
   aiokafka still delivered, an ingestion crash between the Kafka ack and the claim
   confirm, a client retry past ingestion's claim). Each id applied to a feature is
   remembered, as a 63-bit BLAKE2b hash, in the bucket of the time it was applied;
   buckets older than the horizon (`DedupPolicy`, by default 24 h = ingestion's dedup
   TTL) are pruned on the next write. A later copy with a remembered id is skipped as
   a duplicate. In memory a bucket is one base64 string of big-endian 8-byte hashes;
   stored (`codec.py`) the hashes are raw bytes in a blob of their own, which serving
   never reads, written by the same compare-and-set as the tiles.
   Cost: 8 bytes stored per event applied within the horizon, at most
   `max_ids` per record (20,000 by default, 160 KB); past it the oldest ids are
   forgotten first (`ApplyResult.forgotten_ids`, a metric), and a copy of one of those
   would count again. A hash collision (two ids of one user within a day sharing 63
   bits: ~n²/2⁶⁴, 1e-11 at n = 20,000) would drop a genuine event.

Only ids of events that fed a feature on time are kept: a late event stays late for
any later copy, an event no feature uses changes nothing, and a future event was not
applied, so its later copy is its first application.
"""

from __future__ import annotations

import base64
import hashlib
import math
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from app.tiles.features import MAX_FUTURE_MS, FeatureSpec, FeatureState, read_all
from app.tiles.staging import STAGED_MARK, staged_name

UserRecord = dict[str, Any]


@dataclass(frozen=True, slots=True)
class AppliedEvent:
    """One event as read from Kafka: where it sits in the log, and what it says."""

    partition: int
    offset: int
    event: str
    t_ms: int
    properties: Mapping[str, Any]
    # None only for events built by hand (tests, benchmarks): deduplicated by offset only.
    event_id: str | None = None


@dataclass(frozen=True, slots=True)
class DedupPolicy:
    """How long a record remembers the event ids it applied, and how many at most.

    `horizon_ms` must be at least ingestion's dedup TTL: inside it ingestion usually
    stops a copy before Kafka; this layer catches the copies it could not. Ids are kept
    in `BUCKETS` buckets of `horizon_ms / BUCKETS` by apply time, so pruning drops whole
    buckets and an id lives between one horizon and one horizon plus a bucket.
    """

    horizon_ms: int = 24 * 3600 * 1000
    max_ids: int = 20_000

    BUCKETS = 24

    @property
    def bucket_ms(self) -> int:
        return max(self.horizon_ms // self.BUCKETS, 1)


def pack_ids(hashes: Sequence[int]) -> str:
    """Returns a bucket's stored form: base64 of the hashes as big-endian 8-byte words."""
    return base64.b64encode(struct.pack(f">{len(hashes)}Q", *hashes)).decode("ascii")


def unpack_ids(bucket: str) -> tuple[int, ...]:
    """Returns the hashes of a bucket's stored form, in the order they were added."""
    raw = base64.b64decode(bucket)
    return struct.unpack(f">{len(raw) // 8}Q", raw)


def kept_ids(stored: Mapping[str, str] | None, now_ms: int, dedup: DedupPolicy) -> dict[str, str]:
    """Returns the stored id buckets still inside the horizon at `now_ms` (a new dict)."""
    if not stored:
        return {}
    oldest = (now_ms - dedup.horizon_ms) // dedup.bucket_ms
    return {k: v for k, v in stored.items() if int(k) >= oldest}


def remembered(ids: Mapping[str, str]) -> set[int]:
    """Returns every hash the buckets hold."""
    return {h for bucket in ids.values() for h in unpack_ids(bucket)}


def add_ids(ids: dict[str, str], new: Sequence[int], now_ms: int, dedup: DedupPolicy) -> int:
    """Adds `new` hashes to the bucket of `now_ms` in `ids` (in place), then drops the
    oldest ids beyond `dedup.max_ids`. Returns how many were dropped."""
    if not new:
        return 0
    key = str(now_ms // dedup.bucket_ms)
    current = unpack_ids(ids[key]) if key in ids else ()
    ids[key] = pack_ids([*current, *new])
    sizes = {k: len(b) * 3 // 4 // 8 for k, b in ids.items()}  # 8 bytes an id
    excess = sum(sizes.values()) - dedup.max_ids
    if excess <= 0:
        return 0
    forgotten = excess
    for old in sorted(ids, key=int):
        if excess <= 0:
            break
        if sizes[old] <= excess:
            del ids[old]
            excess -= sizes[old]
        else:
            ids[old] = pack_ids(unpack_ids(ids[old])[excess:])  # oldest first
            excess = 0
    return forgotten


def id_hash(event_id: str) -> int:
    """Returns the 63-bit hash a record remembers an event id by (stable across
    processes, unlike `hash`; 63 bits so it is a non-negative signed 64-bit integer
    for every store)."""
    return int.from_bytes(hashlib.blake2b(event_id.encode(), digest_size=8).digest()) >> 1


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """The new record and what happened to each event of the batch.

    `applied + skipped_duplicate + late + future == len(events)`. `applied` includes
    events no feature uses and events whose field value a feature skips. `fresh` holds
    the indexes in `events` of every event not skipped as a duplicate (the ones new to
    the record, forwarded to analytics). `duplicate_ids` is the part of
    `skipped_duplicate` caught by event id (a second copy in the log) rather than by
    offset (a replay); `forgotten_ids` counts ids dropped to keep `max_ids`.
    """

    record: UserRecord
    applied: int
    skipped_duplicate: int
    late: int
    future: int
    fresh: tuple[int, ...]
    duplicate_ids: int = 0
    forgotten_ids: int = 0


def empty_record() -> UserRecord:
    """Returns the record of a user with no state yet."""
    return {"features": {}, "offsets": {}, "ids": {}, "updated_ms": 0, "last_event_ms": 0}


def _specs_by_name(specs_by_event: Mapping[str, Sequence[FeatureSpec]]) -> dict[str, FeatureSpec]:
    specs: dict[str, FeatureSpec] = {}
    for event_specs in specs_by_event.values():
        for spec in event_specs:
            if specs.setdefault(spec.name, spec) != spec:
                raise ValueError(f"feature {spec.name!r} is configured twice, differently")
    return specs


class _SpecPlan:
    """One spec with everything an event needs precomputed for one tile interval.

    `windows` holds (label, tile ms, first readable ms): an event at `t` goes into a
    window's tile `t // tile_ms` iff `t >= first readable ms`, which is the
    `tile_of(t) >= tile_range(now)[0]` of `features.apply_value` without a division
    per window. `earliest_ms` is the least of them: older events are late for the spec.
    `slots` gives each window's label with its index among the applier's distinct
    windows, whose tile key an event works out once for all its specs.
    """

    __slots__ = (
        "accepts",
        "add",
        "clean_from",
        "earliest_ms",
        "field",
        "fingerprint",
        "live",
        "lo",
        "name",
        "normalise",
        "slots",
        "windows",
    )

    def __init__(self, spec: FeatureSpec, now_ms: int) -> None:
        self.name = spec.name
        self.fingerprint = spec.fingerprint
        self.field = spec.field or None
        maths = spec.aggregator
        self.normalise = maths.normalise
        self.add = maths.add
        # None: every event counts (the common case costs one test, not a call).
        self.accepts = spec.filter.compile() if spec.filter is not None else None
        # label -> first tile a query at now (or later) reads; tiles below it are pruned.
        self.lo = {w.label: w.tile_range(now_ms)[0] for w in spec.windows}
        # label -> the keys of the tiles lo..hi+1 (as `apply_value` writes them): a tile
        # map whose keys all lie in it has nothing to prune, which a set test tells
        # without an int() per key. Any other map is filtered key by key.
        self.live = {
            w.label: frozenset(map(str, range(self.lo[w.label], w.tile_of(now_ms) + 2)))
            for w in spec.windows
        }
        # label -> the least `updated_ms` of a record that holds no tile below lo: one
        # written (and so pruned) at or after it. lo(u) = (u - W) // tile >= lo(now)
        # iff u >= lo(now) * tile + W. Such a window is not scanned for tiles to prune.
        self.clean_from = {
            w.label: self.lo[w.label] * w.tile_ms + w.window_ms for w in spec.windows
        }
        self.windows = tuple(
            (w.label, w.tile_ms, self.lo[w.label] * w.tile_ms) for w in spec.windows
        )
        self.earliest_ms = min(first_ms for _, _, first_ms in self.windows)
        self.slots: tuple[tuple[str, int], ...] = ()


# The specs one event kind feeds, grouped for `BatchApplier.apply`'s inner loop: by
# filter (None: none), then by the value they take (field, normalisation), each spec
# as (feature name, add, its windows' (label, slot)).
_Targets = tuple[tuple[str, Any, tuple[tuple[str, int], ...]], ...]
_Groups = tuple[tuple[Any, tuple[tuple[str | None, Any, _Targets], ...]], ...]


@dataclass(frozen=True, slots=True)
class _EventPlan:
    """What an event of one kind does: the feature entries it creates (in spec order),
    the time below which it is late for every spec, and its specs in `_Groups`, so a
    filter and a field value are worked out once per event, not once per feature."""

    entries: tuple[tuple[str, str], ...]  # (feature name, fingerprint)
    earliest_ms: int
    groups: _Groups


def _event_plan(plans: Sequence[_SpecPlan]) -> _EventPlan:
    by_filter: dict[Any, dict[tuple[str | None, Any], list[_SpecPlan]]] = {}
    for plan in plans:
        values = by_filter.setdefault(plan.accepts, {})
        values.setdefault((plan.field, plan.normalise), []).append(plan)
    groups = tuple(
        (
            accepts,
            tuple(
                (field, normalise, tuple((p.name, p.add, p.slots) for p in members))
                for (field, normalise), members in values.items()
            ),
        )
        for accepts, values in by_filter.items()
    )
    return _EventPlan(
        entries=tuple((p.name, p.fingerprint) for p in plans),
        earliest_ms=min(p.earliest_ms for p in plans),
        groups=groups,
    )


class BatchApplier:
    """`apply_batch` for many records, at any `now_ms` inside one tile of every window.

    Window ranges, fingerprints and per-aggregation functions are worked out once here
    instead of per event: only `now_ms + max_future_ms` (the future limit) and
    `updated_ms` depend on the exact `now_ms`, and both are taken per call. Build a new
    one (or check `covers`) when time moves on; `specs_by_event` is kept, not copied.
    Raises ValueError when two different specs share a feature name.

    Per event, the tile key of each distinct window is worked out once (`_slots`), and
    each filter and field value once (`_EventPlan`), for all the features it feeds.
    """

    __slots__ = (
        "_by_event",
        "_by_staged",
        "_plans",
        "_slots",
        "dedup",
        "keyed_events",
        "max_future_ms",
        "specs_by_event",
        "valid_from",
        "valid_until",
    )

    def __init__(
        self,
        specs_by_event: Mapping[str, Sequence[FeatureSpec]],
        now_ms: int,
        max_future_ms: int = MAX_FUTURE_MS,
        dedup: DedupPolicy | None = None,
        keyed_events: frozenset[str] = frozenset(),
    ) -> None:
        self.specs_by_event = specs_by_event
        self.max_future_ms = max_future_ms
        self.dedup = dedup or DedupPolicy()
        # Events that feed per-entity or user x entity features: their ids are
        # remembered here even when no feature of this record counts them, because the
        # user's record decides for those features too which copy of an event is the
        # first (`entities.py`).
        self.keyed_events = keyed_events
        self._plans = {
            name: _SpecPlan(spec, now_ms) for name, spec in _specs_by_name(specs_by_event).items()
        }
        # (tile ms, first readable ms) of every distinct window: one tile key per event.
        slot_of: dict[tuple[int, int], int] = {}
        for plan in self._plans.values():
            plan.slots = tuple(
                (label, slot_of.setdefault((tile_ms, first_ms), len(slot_of)))
                for label, tile_ms, first_ms in plan.windows
            )
        self._slots = tuple(slot_of)
        self._by_event = {
            event: _event_plan([self._plans[spec.name] for spec in specs])
            for event, specs in specs_by_event.items()
            if specs
        }
        # The staged name a backfill may have filled each feature under (`staging.py`).
        self._by_staged = {
            staged_name(plan.name, plan.fingerprint): plan for plan in self._plans.values()
        }
        tiles = [w.tile_ms for specs in specs_by_event.values() for s in specs for w in s.windows]
        # Both ends of a window's range move only when now crosses a multiple of its tile.
        self.valid_from = max((now_ms - now_ms % t for t in tiles), default=now_ms)
        self.valid_until = min((now_ms - now_ms % t + t for t in tiles), default=now_ms + 1)

    def covers(self, now_ms: int) -> bool:
        """Returns whether `apply` may be called at `now_ms`."""
        return self.valid_from <= now_ms < self.valid_until

    def apply(
        self,
        record: Mapping[str, Any] | None,
        events: Sequence[AppliedEvent],
        now_ms: int,
        *,
        owned: bool = False,
    ) -> ApplyResult:
        """Returns `apply_batch(record, specs_by_event, events, now_ms, max_future_ms)`.

        With `owned`, the caller hands `record` over (a record it just decoded and will
        not use again): its features are pruned and updated in place instead of copied
        first, and the result's record is `record` itself. The result is the same.
        Raises ValueError when `now_ms` is outside `[valid_from, valid_until)`.
        """
        if not self.covers(now_ms):
            raise ValueError(f"now {now_ms} is outside [{self.valid_from}, {self.valid_until})")
        out: UserRecord
        if record is None:
            out = empty_record()
            features: dict[str, Any] = {}
        elif owned and isinstance(record, dict) and not _holds_staged(record):
            out = record
            features = self._pruned_in_place(record.get("features", {}), _updated_ms(record))
        else:
            out = dict(record)
            features = self._pruned_copy(record.get("features", {}), _updated_ms(record))
        out["features"] = features
        offsets: dict[str, int] = dict(record.get("offsets", {})) if record is not None else {}
        out["offsets"] = offsets
        ids = kept_ids(record.get("ids") if record is not None else None, now_ms, self.dedup)
        seen: set[int] | None = None  # every remembered id, built on the first event id
        new_ids: list[int] = []
        last_event_ms: int = record.get("last_event_ms", 0) if record is not None else 0

        future_limit = now_ms + self.max_future_ms
        by_event = self._by_event
        slots = self._slots
        applied = duplicates = duplicate_ids = late = future = 0
        fresh: list[int] = []
        entered: set[str] = set()  # event kinds whose features have their entry
        for index, event in enumerate(events):
            partition = str(event.partition)
            last = offsets.get(partition)
            if last is not None and event.offset <= last:
                duplicates += 1
                continue
            offsets[partition] = event.offset
            h: int | None = None
            if event.event_id is not None:
                if seen is None:
                    seen = remembered(ids)
                h = id_hash(event.event_id)
                if h in seen:
                    duplicates += 1  # another copy of an event already applied
                    duplicate_ids += 1
                    continue
                seen.add(h)  # a second copy later in this batch is a duplicate too
            fresh.append(index)
            plan = by_event.get(event.event)
            if plan is None:
                applied += 1  # no feature uses it: applied, offset consumed
                keyed = event.event in self.keyed_events
                if h is not None and keyed and event.t_ms <= future_limit:
                    new_ids.append(h)
                continue
            if event.event not in entered:  # once per kind: nothing is deleted meanwhile
                entered.add(event.event)
                for name, fingerprint in plan.entries:
                    if name not in features:
                        features[name] = {"fp": fingerprint, "w": {}}
            t_ms = event.t_ms
            # FUTURE does not depend on the spec: one feature's verdict is every one's.
            if t_ms > future_limit:
                future += 1
                continue
            if t_ms < plan.earliest_ms:
                late += 1  # older than every window of every feature it feeds
                if h is not None and event.event in self.keyed_events:
                    new_ids.append(h)  # the entities' features decide by this record too
                continue
            applied += 1
            if h is not None:
                new_ids.append(h)
            if t_ms > last_event_ms:
                last_event_ms = t_ms
            # The tile key of each distinct window; None where the tile is no longer read.
            keys = [
                str(t_ms // tile_ms) if t_ms >= first_ms else None for tile_ms, first_ms in slots
            ]
            properties = event.properties
            for accepts, values in plan.groups:
                if accepts is not None and not accepts(properties):
                    continue  # the feature's filter refuses it: still on time
                for field, normalise, targets in values:
                    value = normalise(properties.get(field) if field else None)
                    if value is None:
                        continue  # a value this aggregation skips: the event is still on time
                    for name, add, window_slots in targets:
                        state: FeatureState = features[name]["w"]
                        for label, slot in window_slots:
                            key = keys[slot]
                            if key is None:
                                continue  # a query at now or later can no longer read it
                            tiles = state.get(label)
                            if tiles is None:
                                tiles = state[label] = {}
                            tiles[key] = add(tiles.get(key), t_ms, value)

        for name in list(features):
            windows: FeatureState = features[name]["w"]
            if not all(windows.values()):  # windows the prune emptied and no event refilled
                for label in [label for label, tiles in windows.items() if not tiles]:
                    del windows[label]
            if not windows:
                del features[name]  # nothing left to serve; the fingerprint goes with it
        forgotten = add_ids(ids, new_ids, now_ms, self.dedup)
        out["ids"] = ids
        out["updated_ms"] = now_ms
        out["last_event_ms"] = last_event_ms
        return ApplyResult(
            out, applied, duplicates, late, future, tuple(fresh), duplicate_ids, forgotten
        )

    def _pruned_copy(self, stored: Mapping[str, Any], updated_ms: int) -> dict[str, Any]:
        """Returns the stored features of the configured specs, each tile map copied
        without the tiles below its window's range (what `prune` at now would drop; no
        event of this batch can write one). Partials are shared, never modified; empty
        windows stay, in place, until the end of `apply`, so key order matches a prune
        after the events. A feature stored under another fingerprint restarts empty.
        A window whose range has not moved since the record was written and pruned
        (`updated_ms`, see `_SpecPlan.clean_from`) is copied without a scan."""
        features: dict[str, Any] = {}
        adopted: set[str] = set()
        for name, entry in stored.items():
            plan = self._plans.get(name)
            if plan is None:
                # A backfill's staged copy (`staging.py`) becomes the feature itself, and
                # wins over what the name held; anything else is no longer configured.
                plan = self._by_staged.get(name) if STAGED_MARK in name else None
                if plan is None or entry.get("fp") != plan.fingerprint:
                    continue
                adopted.add(plan.name)
                name = plan.name
            elif plan.name in adopted:
                continue
            if entry.get("fp") != plan.fingerprint:
                features[name] = {"fp": plan.fingerprint, "w": {}}
                continue
            windows: FeatureState = {}
            for label, tiles in entry["w"].items():
                lo = plan.lo.get(label)
                if lo is None:
                    continue  # a window the spec no longer has is dropped
                if updated_ms >= plan.clean_from[label] or plan.live[label].issuperset(tiles):
                    windows[label] = dict(tiles)
                else:
                    windows[label] = {k: p for k, p in tiles.items() if int(k) >= lo}
            features[name] = {"fp": plan.fingerprint, "w": windows}
        return features

    def _pruned_in_place(self, stored: dict[str, Any], updated_ms: int) -> dict[str, Any]:
        """Does what `_pruned_copy` returns to `stored` itself and returns it: the same
        features, windows and tiles in the same order, without copying the tile maps
        (most of a record; copying them was a third of `apply` for one event). Not for a
        record holding a staged copy (`_holds_staged`): only `_pruned_copy` adopts it."""
        for name in list(stored):
            entry = stored[name]
            plan = self._plans.get(name)
            if plan is None:
                del stored[name]  # no longer configured
                continue
            if entry.get("fp") != plan.fingerprint:
                stored[name] = {"fp": plan.fingerprint, "w": {}}
                continue
            windows: FeatureState = entry["w"]
            gone: list[str] = []
            for label, tiles in windows.items():
                lo = plan.lo.get(label)
                if lo is None:
                    gone.append(label)  # a window the spec no longer has is dropped
                elif updated_ms < plan.clean_from[label] and not plan.live[label].issuperset(tiles):
                    for key in [k for k in tiles if int(k) < lo]:
                        del tiles[key]
            for label in gone:
                del windows[label]
            stored[name] = {"fp": plan.fingerprint, "w": windows}  # as `_pruned_copy` lays it
        return stored


def _holds_staged(record: Mapping[str, Any]) -> bool:
    """Whether the record holds a backfill's staged copy (`staging.py`): `_pruned_copy`
    adopts one under the feature's name, which pruning in place does not do."""
    return any(STAGED_MARK in name for name in record.get("features", {}))


def _updated_ms(record: Mapping[str, Any]) -> int:
    """Returns when the record was last written (0: unknown, so every window is scanned)."""
    updated = record.get("updated_ms", 0)
    return updated if type(updated) is int else 0


def apply_batch(
    record: Mapping[str, Any] | None,
    specs_by_event: Mapping[str, Sequence[FeatureSpec]],
    events: Sequence[AppliedEvent],
    now_ms: int,
    max_future_ms: int = MAX_FUTURE_MS,
    dedup: DedupPolicy | None = None,
) -> ApplyResult:
    """Applies `events`, in the given order, to a copy of `record` (None: no record).

    Returns the new record; `record` itself is never modified (the new record shares
    the partials of `record`, which are never modified in place, and nothing else).
    Features absent from `specs_by_event` are dropped; a feature whose fingerprint
    changed restarts empty. Events at or below the partition's stored offset (or below
    an offset already seen in this batch) are skipped as duplicates; all others advance
    the partition's offset, late and future ones included, so they are never retried.
    An event whose `event_id` the record remembers (or an earlier event of the batch
    had) is skipped as a duplicate too; ids are remembered per `dedup`.
    An event is `late` (or `future`) when it is so for every feature it feeds.
    Every feature is pruned at `now_ms`, so the tiles per window stay bounded. The
    result is the one of `features.apply_value` per event and feature, then
    `features.prune` per feature (`tests/tiles/test_record.py` checks it).
    Raises ValueError when two different specs share a feature name.

    `BatchApplier` does the same for many records without redoing the per-spec work.
    """
    applier = BatchApplier(specs_by_event, now_ms, max_future_ms, dedup)
    return applier.apply(record, events, now_ms)


def record_ttl_seconds(specs: Iterable[FeatureSpec], max_future_ms: int = MAX_FUTURE_MS) -> int:
    """Returns the TTL to write records with: longest window + one of its tiles +
    the future-event tolerance, in seconds.

    An event stamped t stops counting at most one window plus one tile after t, and
    accepted events are at most `max_future_ms` ahead of the write, so a record that
    expires after this long without writes held nothing servable any more.
    Raises ValueError when `specs` is empty (no TTL means "keep for ever" to some
    stores, and with no feature there is nothing to keep).
    """
    spans = [w.seconds + w.tile_seconds for spec in specs for w in spec.windows]
    if not spans:
        raise ValueError("no feature configured: there is no record TTL")
    return max(spans) + math.ceil(max_future_ms / 1000)


def serve(
    record: Mapping[str, Any] | None, specs: Iterable[FeatureSpec], now_ms: int
) -> dict[str, Any]:
    """Returns {"<feature>_<window>": value} for every window of every spec.

    A feature missing from the record (or `record` None, or a stale fingerprint
    from before a redeploy) is read from its staged name (`staging.py`) if a backfill
    filled it there, and otherwise served at its empty value: 0 for COUNT, SUM and
    COUNT_DISTINCT, None for the others. Does not modify `record`.
    """
    features: Mapping[str, Any] = (record or {}).get("features", {})
    values: dict[str, Any] = {}
    for spec in specs:
        entry = features.get(spec.name)
        if not entry or entry["fp"] != spec.fingerprint:
            # Filled by a backfill and not yet rewritten by compute (`staging.py`).
            entry = features.get(staged_name(spec.name, spec.fingerprint))
        state: FeatureState = entry["w"] if entry and entry["fp"] == spec.fingerprint else {}
        values.update(read_all(state, spec, now_ms))
    return values
