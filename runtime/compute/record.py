"""The per-user record: applying Kafka batches with exactly-once effect, and serving.

A record is plain JSON-compatible data, kept opaque by the online stores:

    {
      "features": {feature name: {"fp": spec fingerprint, "w": FeatureState}},
      "offsets": {str(partition): last applied offset},
      "updated_ms": now_ms of the last apply,
    }

Exactly-once effect on at-least-once delivery: compute writes the record, then
commits the Kafka offset. A crash in between redelivers events the record already
holds; their offsets are at or below the stored one and are skipped. This needs all
of a user's events on one partition in offset order, which the event key
`{project_id}:{user_id}` gives.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from runtime.compute.aggregators import (
    MAX_FUTURE_MS,
    FeatureSpec,
    FeatureState,
    Timing,
    apply_value,
    prune,
    read_all,
)

UserRecord = dict[str, Any]


@dataclass(frozen=True, slots=True)
class AppliedEvent:
    """One event as read from Kafka: where it sits in the log, and what it says."""

    partition: int
    offset: int
    event: str
    t_ms: int
    properties: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """The new record and what happened to each event of the batch.

    `applied + skipped_duplicate + late + future == len(events)`. `applied` includes
    events no feature uses and events whose field value a feature skips.
    """

    record: UserRecord
    applied: int
    skipped_duplicate: int
    late: int
    future: int


def empty_record() -> UserRecord:
    """Returns the record of a user with no state yet."""
    return {"features": {}, "offsets": {}, "updated_ms": 0}


def _copy(record: Mapping[str, Any] | None) -> UserRecord:
    """Returns a copy sharing only the partials, which are never modified in place."""
    if record is None:
        return empty_record()
    out = dict(record)
    out["features"] = {
        name: {"fp": entry.get("fp"), "w": {lbl: dict(t) for lbl, t in entry["w"].items()}}
        for name, entry in record.get("features", {}).items()
    }
    out["offsets"] = dict(record.get("offsets", {}))
    return out


def _specs_by_name(specs_by_event: Mapping[str, Sequence[FeatureSpec]]) -> dict[str, FeatureSpec]:
    specs: dict[str, FeatureSpec] = {}
    for event_specs in specs_by_event.values():
        for spec in event_specs:
            if specs.setdefault(spec.name, spec) != spec:
                raise ValueError(f"feature {spec.name!r} is configured twice, differently")
    return specs


def apply_batch(
    record: Mapping[str, Any] | None,
    specs_by_event: Mapping[str, Sequence[FeatureSpec]],
    events: Sequence[AppliedEvent],
    now_ms: int,
    max_future_ms: int = MAX_FUTURE_MS,
) -> ApplyResult:
    """Applies `events`, in the given order, to a copy of `record` (None: no record).

    Returns the new record; `record` itself is never modified. Features absent from
    `specs_by_event` are dropped; a feature whose fingerprint changed restarts
    empty. Events at or below the partition's stored offset (or below an offset
    already seen in this batch) are skipped as duplicates; all others advance the
    partition's offset, late and future ones included, so they are never retried.
    An event is `late` (or `future`) when it is so for every feature it feeds.
    Every feature is pruned at `now_ms`, so the tiles per window stay bounded.
    Raises ValueError when two different specs share a feature name.
    """
    specs = _specs_by_name(specs_by_event)
    out = _copy(record)
    features: dict[str, Any] = out["features"]
    for name in list(features):
        spec = specs.get(name)
        if spec is None:
            del features[name]
        elif features[name]["fp"] != spec.fingerprint:
            features[name] = {"fp": spec.fingerprint, "w": {}}

    offsets: dict[str, int] = out["offsets"]
    applied = duplicates = late = future = 0
    for event in events:
        partition = str(event.partition)
        last = offsets.get(partition)
        if last is not None and event.offset <= last:
            duplicates += 1
            continue
        offsets[partition] = event.offset
        verdicts: list[Timing] = []
        for spec in specs_by_event.get(event.event, ()):
            entry = features.setdefault(spec.name, {"fp": spec.fingerprint, "w": {}})
            value = event.properties.get(spec.field) if spec.field else None
            verdicts.append(apply_value(entry["w"], spec, event.t_ms, value, now_ms, max_future_ms))
        if verdicts and all(v is Timing.FUTURE for v in verdicts):
            future += 1
        elif verdicts and Timing.ON_TIME not in verdicts:
            late += 1
        else:
            applied += 1

    for name in list(features):
        state: FeatureState = features[name]["w"]
        prune(state, specs[name], now_ms)
        if not state:
            del features[name]  # nothing left to serve; the fingerprint goes with it
    out["updated_ms"] = now_ms
    return ApplyResult(out, applied, duplicates, late, future)


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
    from before a redeploy) is served at its empty value: 0 for COUNT, SUM and
    COUNT_DISTINCT, None for the others. Does not modify `record`.
    """
    features: Mapping[str, Any] = (record or {}).get("features", {})
    values: dict[str, Any] = {}
    for spec in specs:
        entry = features.get(spec.name)
        state: FeatureState = entry["w"] if entry and entry["fp"] == spec.fingerprint else {}
        values.update(read_all(state, spec, now_ms))
    return values
