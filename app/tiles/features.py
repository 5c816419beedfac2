"""A deployed feature (`FeatureSpec`) and the reference definition of its windowed
aggregation by event time over partial aggregates in time tiles.

Pure functions, no I/O. One feature's state is `FeatureState`: window label ->
{tile index as str -> partial}. String keys let the state round-trip through JSON,
msgpack and Aerospike maps unchanged. What a partial holds, and the maths of each
aggregation, are its class in `aggregations.py`.

`apply_value`, `prune` and `read` are the definition, one event and one window at a
time, checked against a brute-force oracle; the hot paths do the same with the
per-window work hoisted out of the loops (`record.BatchApplier` for writes, `merge.py`
for reads), and their tests pin them to these functions.

The tiles a query reads, and why the result may hold up to one extra tile of events
at the window's old edge, are described in `windows.py`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from app.tiles.aggregations import Aggregation, Aggregator, aggregator
from app.tiles.filters import FeatureFilter
from app.tiles.windows import Window

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
    """One deployed feature: `aggregation` of `field` over each of `windows`, counting
    only the events `filter` accepts (every event when None); `size` is LAST_N's N and
    TOP_K's K. `key` is set for a user x entity feature: the property whose values split
    it, one state per value (`entities.PairApplier`), served as {value: feature value}.

    Raises ValueError when the name is empty, there is no window, two windows share a
    label, an aggregation that needs a field has none (COUNT and RECENCY ignore it), or
    the size does not fit the aggregation.
    """

    name: str
    aggregation: Aggregation
    field: str | None
    windows: tuple[Window, ...]
    size: int | None = None
    filter: FeatureFilter | None = None
    key: str | None = None

    def __post_init__(self) -> None:
        # Accept the schema's plain strings ("SUM") as well as the enum.
        object.__setattr__(self, "aggregation", Aggregation(self.aggregation))
        aggregator(self.aggregation, self.size)  # raises ValueError for a wrong size
        if not self.name:
            raise ValueError("feature name must not be empty")
        if not self.windows:
            raise ValueError(f"feature {self.name!r} has no window")
        labels = [w.label for w in self.windows]
        if len(set(labels)) != len(labels):
            raise ValueError(f"feature {self.name!r} repeats a window: {labels}")
        if self.aggregator.needs_field and not self.field:
            raise ValueError(f"feature {self.name!r}: {self.aggregation} needs a field")

    @property
    def aggregator(self) -> Aggregator:
        """Returns the maths of this feature's aggregation (with its size)."""
        return aggregator(self.aggregation, self.size)

    @property
    def fingerprint(self) -> str:
        """Returns what the stored tiles mean; when it changes the state must be reset.

        Windows are not part of it: a new window starts empty, a removed one is pruned,
        the others keep their tiles. The size and the filter are: a TOP_K's tiles keep
        counters for K, and a new filter counts other events.
        """
        base = self.aggregation.value
        if self.aggregator.needs_field:
            base = f"{base}:{self.field}"
        if self.size is not None:
            base = f"{base}#{self.size}"
        if self.filter is not None:
            base = f"{base}?{self.filter.canonical}"
        if self.key is not None:
            base = f"{base}/{self.key}"
        return base

    def accepts(self, properties: Mapping[str, Any]) -> bool:
        """Returns whether the feature counts an event with these properties."""
        return self.filter is None or self.filter.compile()(properties)

    @property
    def longest(self) -> Window:
        """Returns the window with the most seconds."""
        return max(self.windows, key=lambda w: w.seconds)


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
    maths = spec.aggregator
    normalised = maths.normalise(value)
    if verdict is not Timing.ON_TIME or normalised is None:
        return verdict
    for window in spec.windows:
        tile = window.tile_of(t_ms)
        if tile < window.tile_range(now_ms)[0]:
            continue  # a query at now or later can no longer read this tile
        tiles = state.setdefault(window.label, {})
        key = str(tile)
        tiles[key] = maths.add(tiles.get(key), t_ms, normalised)
    return verdict


def apply_event(
    state: FeatureState,
    spec: FeatureSpec,
    t_ms: int,
    properties: Mapping[str, Any],
    now_ms: int,
    max_future_ms: int = MAX_FUTURE_MS,
) -> Timing:
    """`apply_value` of one event's properties: the field's value when the feature's
    filter accepts them; an event it refuses changes nothing (but keeps its timing)."""
    if not spec.accepts(properties):
        return timing(spec, t_ms, now_ms, max_future_ms)
    value = properties.get(spec.field) if spec.field else None
    return apply_value(state, spec, t_ms, value, now_ms, max_future_ms)


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
    for LAST/FIRST (None when empty), a list for LAST_N/TOP_K, seconds for RECENCY
    (None when empty). Events stamped after `now_ms` but inside its
    tile count (see `windows.py`). Tiles below the range of the latest `prune` are
    gone, so a reader whose clock is d behind the writer's can miss up to d of events
    at the window's old edge.
    """
    lo, hi = window.tile_range(now_ms)
    tiles = state.get(window.label, {})
    in_range = [(int(k), p) for k, p in tiles.items() if lo <= int(k) <= hi]
    in_range.sort(key=lambda item: item[0])
    maths = spec.aggregator
    return maths.finish(maths.combine([p for _, p in in_range]), now_ms)


def read_all(state: FeatureState, spec: FeatureSpec, now_ms: int) -> dict[str, Any]:
    """Returns {"<name>_<window label>": value} for every window of `spec`."""
    return {f"{spec.name}_{w.label}": read(state, spec, w, now_ms) for w in spec.windows}
