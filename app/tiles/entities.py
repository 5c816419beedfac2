"""Features of entities beyond the user. Pure functions, no I/O.

An event schema declares which properties are entity keys (`product_id` → entity
`product`); a feature aggregates per user (the default), per entity, or per user x
entity. The two new kinds live in different records, for different reasons:

- **Per user x entity** ("this user's spend per category"): inside the user's record,
  under `pairs`, one tile state per key value:

      "pairs": {feature: {"fp": fingerprint, "k": {key value: {"w": FeatureState,
                                                                "t": newest event ms}}}}

  All of a user's events sit on one Kafka partition, so the user's record keeps its
  exactly-once machinery (offsets, remembered ids, compare-and-set) unchanged, and a
  read of the user answers these features in the same store read, as
  `{key value: value}`. A user keeps at most `MAX_KEYS_PER_USER` key values per feature:
  past it the values whose newest event is oldest are dropped (`PairResult.dropped`,
  counted by compute), and a key with no event left in any window is dropped anyway.

- **Per entity** (a product's purchases in the last hour): a record of its own per
  entity id, in the store scope `entity_scope(project, entity)` (no project id holds a
  `/`, so it never meets a user's record), keyed by `store_id(id)`. A product's events
  come from every user, so from every partition and more than one compute worker.
  Exactly-once holds with what the user's record already has, see `runtime/compute/
  entity_writer.py`: the entity record keeps one offset per partition (each partition
  is read in order by one consumer at a time), compare-and-set settles concurrent
  writers, and the user's record, not the entity's, decides which copy of an event id
  is the first (a hot product would otherwise need tens of thousands of remembered ids,
  rewritten on every batch, and would forget them past `COMPUTE_DEDUP_MAX_IDS`).

Entity ids are free text (1-128 printable characters, checked at ingestion and by
serving) or integers (served by their decimal text). `store_id` percent-encodes every
character outside `[A-Za-z0-9_-]`, so `$where`, `../x` or a `:` never reach a store key
as written, and two ids never share one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from app.tiles.features import MAX_FUTURE_MS, FeatureSpec, FeatureState, read
from app.tiles.record import AppliedEvent, BatchApplier

# Key values a user keeps per user x entity feature (e.g. categories): a record stays
# bounded (~100 x the feature's tiles) whatever the catalogue's size.
MAX_KEYS_PER_USER = 100

_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def entity_id_text(value: Any) -> str | None:
    """Returns the entity id an entity-key property's value names: the text itself, an
    integer's decimal form; None when absent or not an id (ingestion refuses those, so
    None only skips the event for that entity's features)."""
    if type(value) is str:
        return value or None
    if type(value) is int:
        return str(value)
    return None


def store_id(entity_id: str) -> str:
    """Returns the id as a store key part: every character outside `[A-Za-z0-9_-]`
    percent-encoded as its UTF-8 bytes (injective: `%` itself is encoded)."""
    if all(c in _SAFE for c in entity_id):
        return entity_id
    return "".join(
        c if c in _SAFE else "".join(f"%{b:02X}" for b in c.encode("utf-8", "surrogatepass"))
        for c in entity_id
    )


def entity_scope(project_id: str, entity: str) -> str:
    """Returns the store scope (the `project_id` the online store is given) of the
    records of `entity` in `project_id`: `{project}/{entity}`."""
    return f"{project_id}/{entity}"


def group_by_entity(
    events: Sequence[AppliedEvent], key_by_event: Mapping[str, str]
) -> dict[str, list[AppliedEvent]]:
    """Returns the events that name an entity, grouped by its id, each without its
    event id (duplicates were decided by the user's record), in (partition, offset)
    order per id: events of many users interleave in a partition, and a record skips
    an event at or below the offset it holds for the partition."""
    groups: dict[str, list[AppliedEvent]] = {}
    for event in events:
        key = key_by_event.get(event.event)
        if key is None:
            continue
        entity_id = entity_id_text(event.properties.get(key))
        if entity_id is None:
            continue
        groups.setdefault(entity_id, []).append(dataclasses.replace(event, event_id=None))
    for group in groups.values():
        group.sort(key=_log_position)
    return groups


def _log_position(event: AppliedEvent) -> tuple[int, int]:
    return event.partition, event.offset


@dataclass(frozen=True, slots=True)
class PairResult:
    """The new `pairs` section of a user's record, how many key values the cap dropped,
    and the event time of the newest event it counted (0: none), for the record's
    freshness."""

    pairs: dict[str, Any]
    dropped: int
    newest_ms: int = 0


class PairApplier:
    """Applies a user's new events to the user x entity features of the user's record.

    `pairs_by_event` maps an event key to the pair specs it feeds (each with `key` set,
    the property whose value selects the state). Like `BatchApplier`, valid for any
    `now_ms` inside one tile of every window (`covers`).
    """

    __slots__ = ("_appliers", "_specs", "max_keys", "specs", "valid_from", "valid_until")

    def __init__(
        self,
        pairs_by_event: Mapping[str, Sequence[FeatureSpec]],
        now_ms: int,
        max_future_ms: int = MAX_FUTURE_MS,
        max_keys: int = MAX_KEYS_PER_USER,
    ) -> None:
        self.max_keys = max_keys
        self.specs = pairs_by_event  # kept, not copied: callers compare it by identity
        self._specs: dict[str, tuple[str, FeatureSpec]] = {}
        self._appliers: dict[str, BatchApplier] = {}
        for event, specs in pairs_by_event.items():
            for spec in specs:
                if spec.key is None:
                    raise ValueError(f"feature {spec.name!r} is not per user x entity")
                self._specs[spec.name] = (event, spec)
                self._appliers[spec.name] = BatchApplier({event: (spec,)}, now_ms, max_future_ms)
        appliers = self._appliers.values()
        self.valid_from = max((a.valid_from for a in appliers), default=now_ms)
        self.valid_until = min((a.valid_until for a in appliers), default=now_ms + 1)

    def covers(self, now_ms: int) -> bool:
        """Returns whether `apply` may be called at `now_ms`."""
        return self.valid_from <= now_ms < self.valid_until

    def apply(
        self, stored: Mapping[str, Any] | None, events: Sequence[AppliedEvent], now_ms: int
    ) -> PairResult:
        """Returns the `pairs` section after `events` (the user's events new to the
        record, in log order), from the `stored` section (None: none).

        Each key value's state is applied as `BatchApplier.apply` would a record of
        its own (so pruned, late and future events alike); features no longer
        configured, or stored under another fingerprint, start over.
        """
        stored = stored or {}
        out: dict[str, Any] = {}
        dropped = newest_ms = 0
        for name, (event_key, spec) in self._specs.items():
            entry = stored.get(name)
            fp = spec.fingerprint
            keys: dict[str, Any] = dict(entry["k"]) if entry and entry.get("fp") == fp else {}
            groups = group_by_entity(events, {event_key: spec.key})  # type: ignore[dict-item]
            applier = self._appliers[name]
            for value, group in groups.items():
                before = keys.get(value)
                record = None
                if before is not None:
                    record = {
                        "features": {name: {"fp": fp, "w": before["w"]}},
                        "last_event_ms": before["t"],
                    }
                after = applier.apply(record, group, now_ms).record
                feature = after["features"].get(name)
                if feature is None:
                    keys.pop(value, None)
                else:
                    keys[value] = {"w": feature["w"], "t": after["last_event_ms"]}
                    newest_ms = max(newest_ms, after["last_event_ms"])
            keys, lost = _bounded(keys, spec, now_ms, self.max_keys)
            dropped += lost
            if keys:
                out[name] = {"fp": fp, "k": keys}
        return PairResult(out, dropped, newest_ms)


def _bounded(
    keys: dict[str, Any], spec: FeatureSpec, now_ms: int, max_keys: int
) -> tuple[dict[str, Any], int]:
    """Returns the key values any window can still read (newest event inside the
    longest window plus a tile), at most `max_keys` of them, the most recent kept; and
    how many the cap dropped."""
    longest = spec.longest
    oldest = now_ms - longest.seconds * 1000 - longest.tile_ms
    live = {k: v for k, v in keys.items() if v["t"] >= oldest}
    if len(live) <= max_keys:
        return live, 0
    newest = sorted(live, key=lambda k: (live[k]["t"], k), reverse=True)[:max_keys]
    return {k: live[k] for k in newest}, len(live) - max_keys


def read_pairs(
    section: Mapping[str, Any] | None, spec: FeatureSpec, now_ms: int
) -> dict[str, dict[str, Any]]:
    """Returns {"<feature>_<window>": {key value: value}} of one user x entity feature,
    holding the key values with at least one event counted in that window (the
    reference the serving merge is checked against)."""
    entry = (section or {}).get(spec.name)
    keys: Mapping[str, Any] = entry["k"] if entry and entry["fp"] == spec.fingerprint else {}
    out: dict[str, dict[str, Any]] = {}
    for window in spec.windows:
        lo, hi = window.tile_range(now_ms)
        values: dict[str, Any] = {}
        for value, item in keys.items():
            state: FeatureState = item["w"]
            if any(lo <= int(tile) <= hi for tile in state.get(window.label, {})):
                values[value] = read(state, spec, window, now_ms)
        out[f"{spec.name}_{window.label}"] = values
    return out
