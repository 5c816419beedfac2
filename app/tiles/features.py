"""Windowed aggregation by event time over partial aggregates in time tiles.

Pure functions, no I/O. One feature's state is `FeatureState`: window label ->
{tile index as str -> partial}. String keys let the state round-trip through JSON,
msgpack and Aerospike maps unchanged. Partials, per aggregation:

    COUNT int | SUM float | AVG [sum, count] | MIN, MAX float
    LAST, FIRST [t_ms, value] | COUNT_DISTINCT see `sketch.py`

Partials are immutable values: every update stores a new one, so a shallow copy of
the tile maps is enough to keep an older state intact (`record.py` relies on it).

`NORMALISE` and `ADD` are the per-aggregation maths of one event. `apply_value`,
`prune` and `read` are the definition, one event and one window at a time, checked
against a brute-force oracle; the hot paths do the same with the per-window work
hoisted out of the loops (`record.BatchApplier` for writes, `runtime/serving/merge.py`
for reads), and their tests pin them to these functions.

The tiles a query reads, and why the result may hold up to one extra tile of events
at the window's old edge, are described in `windows.py`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from runtime.compute import sketch
from runtime.compute.windows import Window


class Aggregation(StrEnum):
    COUNT = "COUNT"
    SUM = "SUM"
    AVG = "AVG"
    MIN = "MIN"
    MAX = "MAX"
    COUNT_DISTINCT = "COUNT_DISTINCT"
    LAST = "LAST"
    FIRST = "FIRST"


NUMERIC_AGGREGATIONS = frozenset(
    {Aggregation.SUM, Aggregation.AVG, Aggregation.MIN, Aggregation.MAX}
)

# Events stamped further ahead of compute's clock than this are refused: a tile far in
# the future would sit in the record, unreadable, and break the memory bound (61 tiles
# per window, plus at most MAX_FUTURE_MS / tile of future tiles). Five minutes matches
# the webhook timestamp tolerance, so ingestion should refuse the same skew up front.
MAX_FUTURE_MS = 5 * 60 * 1000

FeatureState = dict[str, dict[str, Any]]


class Timing(StrEnum):
    """Where an event's time falls relative to what a feature can still serve."""

    ON_TIME = "on_time"
    LATE = "late"  # no window can ever read its tile again
    FUTURE = "future"  # more than MAX_FUTURE_MS ahead of now


@dataclass(frozen=True, slots=True)
class FeatureSpec:
    """One deployed feature: `aggregation` of `field` over each of `windows`.

    Raises ValueError when the name is empty, there is no window, two windows share a
    label, or an aggregation other than COUNT has no field (COUNT ignores the field).
    """

    name: str
    aggregation: Aggregation
    field: str | None
    windows: tuple[Window, ...]

    def __post_init__(self) -> None:
        # Accept the schema's plain strings ("SUM") as well as the enum.
        object.__setattr__(self, "aggregation", Aggregation(self.aggregation))
        if not self.name:
            raise ValueError("feature name must not be empty")
        if not self.windows:
            raise ValueError(f"feature {self.name!r} has no window")
        labels = [w.label for w in self.windows]
        if len(set(labels)) != len(labels):
            raise ValueError(f"feature {self.name!r} repeats a window: {labels}")
        if self.aggregation is not Aggregation.COUNT and not self.field:
            raise ValueError(f"feature {self.name!r}: {self.aggregation} needs a field")

    @property
    def fingerprint(self) -> str:
        """Returns what the stored tiles mean; when it changes the state must be reset.

        Windows are not part of it: a new window starts empty, a removed one is pruned,
        the others keep their tiles.
        """
        if self.aggregation is Aggregation.COUNT:
            return Aggregation.COUNT.value
        return f"{self.aggregation.value}:{self.field}"

    @property
    def longest(self) -> Window:
        """Returns the window with the most seconds."""
        return max(self.windows, key=lambda w: w.seconds)


def as_number(value: Any) -> float | None:
    """Returns `value` as a finite float, or None when SUM/AVG/MIN/MAX must skip it.

    bool is not a number; NaN, infinities and ints too large for a float are skipped
    (one NaN would poison a sum until its tile expires).
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def distinct_key(value: Any) -> str | None:
    """Returns the canonical string COUNT_DISTINCT counts, or None for a missing value.

    Strings are kept as is; other values are `json.dumps(value, sort_keys=True)`,
    except that an integral float counts as its int (1.0 and 1 are one value). So
    the string "1" and the number 1 are also one value; a field has one type in
    practice, since ingestion checks properties against the event's schema.
    """
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return json.dumps(value, sort_keys=True)


def empty_value(aggregation: Aggregation) -> Any:
    """Returns the value served when no event is in the window: 0 or None."""
    if aggregation in (Aggregation.COUNT, Aggregation.COUNT_DISTINCT):
        return 0
    if aggregation is Aggregation.SUM:
        return 0.0
    return None


def _always(value: Any) -> bool:
    return True  # COUNT counts every event, whatever its field holds


def _present(value: Any) -> Any:
    return value


# Per aggregation: an event's field value -> what the partial takes, None to skip it.
NORMALISE: dict[Aggregation, Callable[[Any], Any]] = {
    Aggregation.COUNT: _always,
    Aggregation.SUM: as_number,
    Aggregation.AVG: as_number,
    Aggregation.MIN: as_number,
    Aggregation.MAX: as_number,
    Aggregation.COUNT_DISTINCT: distinct_key,
    Aggregation.LAST: _present,
    Aggregation.FIRST: _present,
}


def _input(aggregation: Aggregation, value: Any) -> tuple[bool, Any]:
    """Returns (counts, normalised value) for one event's field value."""
    normalised = NORMALISE[aggregation](value)
    return normalised is not None, normalised


def _add_count(partial: Any, t_ms: int, value: Any) -> Any:
    return (partial or 0) + 1


def _add_sum(partial: Any, t_ms: int, value: Any) -> Any:
    return (partial or 0.0) + value


def _add_avg(partial: Any, t_ms: int, value: Any) -> Any:
    total, count = partial or (0.0, 0)
    return [total + value, count + 1]


def _add_min(partial: Any, t_ms: int, value: Any) -> Any:
    return value if partial is None else min(partial, value)


def _add_max(partial: Any, t_ms: int, value: Any) -> Any:
    return value if partial is None else max(partial, value)


def _add_last(partial: Any, t_ms: int, value: Any) -> Any:
    # `>=`: on equal times the later-applied event wins.
    return [t_ms, value] if partial is None or t_ms >= partial[0] else partial


def _add_first(partial: Any, t_ms: int, value: Any) -> Any:
    # `<`: on equal times the earlier-applied event stays.
    return [t_ms, value] if partial is None or t_ms < partial[0] else partial


def _add_distinct(partial: Any, t_ms: int, value: Any) -> Any:
    return sketch.add(partial, value)


# Per aggregation: (partial or None for an empty tile, event time, normalised value) ->
# a NEW partial; partials are never modified in place (see the module docstring).
ADD: dict[Aggregation, Callable[[Any, int, Any], Any]] = {
    Aggregation.COUNT: _add_count,
    Aggregation.SUM: _add_sum,
    Aggregation.AVG: _add_avg,
    Aggregation.MIN: _add_min,
    Aggregation.MAX: _add_max,
    Aggregation.LAST: _add_last,
    Aggregation.FIRST: _add_first,
    Aggregation.COUNT_DISTINCT: _add_distinct,
}


def _add(aggregation: Aggregation, partial: Any, t_ms: int, value: Any) -> Any:
    """Returns a new partial: `partial` (None for an empty tile) plus one input."""
    return ADD[aggregation](partial, t_ms, value)


def combine(aggregation: Aggregation, partials: Sequence[Any]) -> Any:
    """Returns the feature value of tile partials given in tile order.

    Returns `empty_value(aggregation)` when `partials` is empty. Two tiles never hold
    the same event time, so LAST/FIRST ties are settled inside a tile by `_add`.
    """
    if not partials:
        return empty_value(aggregation)
    match aggregation:
        case Aggregation.COUNT:
            return sum(int(p) for p in partials)
        case Aggregation.SUM:
            # fsum: the result does not depend on how events fell into tiles.
            return math.fsum(partials)
        case Aggregation.AVG:
            count = sum(int(p[1]) for p in partials)
            return math.fsum(p[0] for p in partials) / count if count else None
        case Aggregation.MIN:
            return float(min(partials))
        case Aggregation.MAX:
            return float(max(partials))
        case Aggregation.LAST:
            return max(partials, key=lambda p: p[0])[1]
        case Aggregation.FIRST:
            return min(partials, key=lambda p: p[0])[1]
        case Aggregation.COUNT_DISTINCT:
            return sketch.count_distinct(partials)
    raise AssertionError(f"unhandled aggregation {aggregation}")


def timing(spec: FeatureSpec, t_ms: int, now_ms: int, max_future_ms: int = MAX_FUTURE_MS) -> Timing:
    """Returns whether an event at `t_ms` can still count for `spec` at `now_ms`.

    LATE when no window's range at `now_ms` or later can include its tile, which is
    when it is older than roughly the longest window plus one of its tiles.
    """
    if t_ms > now_ms + max_future_ms:
        return Timing.FUTURE
    if any(w.tile_of(t_ms) >= w.tile_range(now_ms)[0] for w in spec.windows):
        return Timing.ON_TIME
    return Timing.LATE


def apply_value(
    state: FeatureState,
    spec: FeatureSpec,
    t_ms: int,
    value: Any,
    now_ms: int,
    max_future_ms: int = MAX_FUTURE_MS,
) -> Timing:
    """Adds one event (its field `value`, None if missing) to `state`, in place.

    Returns the event's `timing`; only ON_TIME events change the state. An ON_TIME
    event goes into each window whose range can still include it (a 2-hour-old event
    updates "24h", not "1h"); a value the aggregation skips (non-numeric for SUM,
    None for COUNT_DISTINCT/LAST/FIRST) changes nothing but the event is ON_TIME.
    """
    verdict = timing(spec, t_ms, now_ms, max_future_ms)
    counts, normalised = _input(spec.aggregation, value)
    if verdict is not Timing.ON_TIME or not counts:
        return verdict
    for window in spec.windows:
        tile = window.tile_of(t_ms)
        if tile < window.tile_range(now_ms)[0]:
            continue  # a query at now or later can no longer read this tile
        tiles = state.setdefault(window.label, {})
        key = str(tile)
        tiles[key] = _add(spec.aggregation, tiles.get(key), t_ms, normalised)
    return verdict


def prune(state: FeatureState, spec: FeatureSpec, now_ms: int) -> None:
    """Drops, in place, the tiles no query at `now_ms` or later reads, and the
    windows `spec` no longer has. Returns None.

    Safe because `lo` only grows with `now`; afterwards each window holds at most 61
    tiles up to `now`, plus tiles of events stamped ahead of `now`.
    """
    labels = {w.label: w for w in spec.windows}
    for label in list(state):
        window = labels.get(label)
        if window is None:
            del state[label]
            continue
        lo = window.tile_range(now_ms)[0]
        tiles = state[label]
        for key in [k for k in tiles if int(k) < lo]:
            del tiles[key]
        if not tiles:
            del state[label]


def read(state: FeatureState, spec: FeatureSpec, window: Window, now_ms: int) -> Any:
    """Returns the feature's value over `window` at `now_ms`.

    Counts the events in `window.span_ms(now_ms)`; the empty value when there are
    none. int for COUNT/COUNT_DISTINCT, float for SUM/AVG/MIN/MAX, the stored value
    for LAST/FIRST (None when empty). Events stamped after `now_ms` but inside its
    tile count (see `windows.py`). Tiles below the range of the latest `prune` are
    gone, so a reader whose clock is d behind the writer's can miss up to d of events
    at the window's old edge.
    """
    lo, hi = window.tile_range(now_ms)
    tiles = state.get(window.label, {})
    in_range = [(int(k), p) for k, p in tiles.items() if lo <= int(k) <= hi]
    in_range.sort(key=lambda item: item[0])
    return combine(spec.aggregation, [p for _, p in in_range])


def read_all(state: FeatureState, spec: FeatureSpec, now_ms: int) -> dict[str, Any]:
    """Returns {"<name>_<window label>": value} for every window of `spec`."""
    return {f"{spec.name}_{w.label}": read(state, spec, w, now_ms) for w in spec.windows}
