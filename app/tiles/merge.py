"""The read-time tile merge of many records at one `now`: `record.serve`, made cheap.

`runtime/compute/record.serve` is the reference: for each feature and window it
computes the window's tile range, parses, filters and sorts the tiles, and combines
them with `aggregators.combine`. A batch read evaluates every record at the same
`now`, so here the work that does not depend on the record is done once per tile
boundary instead of once per user and window:

- each window's range `lo..hi` becomes the set of its tile keys as compute writes
  them (`str(tile)`), so a stored key is tested with one set lookup instead of an
  `int()` (a key outside the set, e.g. written some other way, is still parsed and
  compared, so the result is the same for any key);
- each aggregation has its own loop (`_READERS`) instead of `combine`'s dispatch;
  only the results that depend on tile order are computed in tile order:
  COUNT_DISTINCT (sketch unions), and MIN/MAX when the extreme is a zero (0.0 and
  -0.0 compare equal, and the reference keeps the first in tile order). Sums use
  `math.fsum`, which is exact whatever the order; LAST/FIRST compare event times,
  and two tiles never hold the same time;
- the answer starts as a copy of the empty answer, so a feature the record does not
  hold (or holds under another fingerprint) costs one dict lookup.

`tests/runtime/serving/test_merge.py` checks, with hypothesis, that the result equals
`record.serve` for every aggregation, window, record and time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from operator import itemgetter
from typing import Any

from runtime.compute import sketch
from runtime.compute.aggregators import Aggregation, FeatureSpec, empty_value

Tiles = Mapping[str, Any]


class _Range:
    """The tiles `lo..hi` a window reads at one `now`: `keys` maps each one's key to
    its index."""

    __slots__ = ("hi", "keys", "lo")

    def __init__(self, lo: int, hi: int) -> None:
        self.lo = lo
        self.hi = hi
        self.keys = {str(tile): tile for tile in range(lo, hi + 1)}

    def ordered(self, tiles: Tiles) -> list[Any]:
        """Returns the partials of the tiles in range, in tile order."""
        keys, lo, hi = self.keys, self.lo, self.hi
        found: list[tuple[int, Any]] = []
        for k, p in tiles.items():
            tile = keys.get(k)
            if tile is None:
                tile = int(k)
                if not lo <= tile <= hi:
                    continue
            found.append((tile, p))
        found.sort(key=_first_item)
        return [p for _, p in found]


# (tile, partial) pairs sort by tile; LAST/FIRST partials are [event time, value], AVG
# partials [sum, count].
_first_item = itemgetter(0)
_second = itemgetter(1)


# One per aggregation: the value of `tiles` over `window`, as `aggregators.combine` of
# the partials in range, in tile order, gives it (its empty value when none is). The
# range filter is spelt out in each (not a call to `_Range.partials`): these run once
# per window of every user read, and a call costs as much as the filter.
def _count(tiles: Tiles, w: _Range) -> Any:
    keys, lo, hi = w.keys, w.lo, w.hi
    return sum([int(p) for k, p in tiles.items() if k in keys or lo <= int(k) <= hi])


def _sum(tiles: Tiles, w: _Range) -> Any:
    keys, lo, hi = w.keys, w.lo, w.hi
    return math.fsum([p for k, p in tiles.items() if k in keys or lo <= int(k) <= hi])


def _avg(tiles: Tiles, w: _Range) -> Any:
    keys, lo, hi = w.keys, w.lo, w.hi
    partials = [p for k, p in tiles.items() if k in keys or lo <= int(k) <= hi]
    count = sum(map(int, map(_second, partials)))
    return math.fsum(map(_first_item, partials)) / count if count else None


def _min(tiles: Tiles, w: _Range) -> Any:
    keys, lo, hi = w.keys, w.lo, w.hi
    partials = [p for k, p in tiles.items() if k in keys or lo <= int(k) <= hi]
    if not partials:
        return None
    least = min(partials)
    return float(least if least != 0 else min(w.ordered(tiles)))


def _max(tiles: Tiles, w: _Range) -> Any:
    keys, lo, hi = w.keys, w.lo, w.hi
    partials = [p for k, p in tiles.items() if k in keys or lo <= int(k) <= hi]
    if not partials:
        return None
    most = max(partials)
    return float(most if most != 0 else max(w.ordered(tiles)))


def _last(tiles: Tiles, w: _Range) -> Any:
    keys, lo, hi = w.keys, w.lo, w.hi
    partials = [p for k, p in tiles.items() if k in keys or lo <= int(k) <= hi]
    return max(partials, key=_first_item)[1] if partials else None


def _first(tiles: Tiles, w: _Range) -> Any:
    keys, lo, hi = w.keys, w.lo, w.hi
    partials = [p for k, p in tiles.items() if k in keys or lo <= int(k) <= hi]
    return min(partials, key=_first_item)[1] if partials else None


def _count_distinct(tiles: Tiles, w: _Range) -> Any:
    keys, lo, hi = w.keys, w.lo, w.hi
    union: set[str] = set()
    for k, p in tiles.items():
        if k in keys or lo <= int(k) <= hi:
            if isinstance(p, str):
                # A sketch: unions are taken in tile order, as the reference does.
                return sketch.count_distinct(w.ordered(tiles))
            union.update(p)  # exact values: the union is a set, in any order
    return len(union)


_READERS: dict[Aggregation, Callable[[Tiles, _Range], Any]] = {
    Aggregation.COUNT: _count,
    Aggregation.SUM: _sum,
    Aggregation.AVG: _avg,
    Aggregation.MIN: _min,
    Aggregation.MAX: _max,
    Aggregation.LAST: _last,
    Aggregation.FIRST: _first,
    Aggregation.COUNT_DISTINCT: _count_distinct,
}

# (window label, served key, its range)
_Window = tuple[str, str, _Range]
# (feature name, fingerprint, reader of its aggregation, its windows)
_Feature = tuple[str, str, Callable[[Tiles, _Range], Any], tuple[_Window, ...]]


class Merger:
    """Serves records at one `now_ms` for a fixed list of specs.

    Both ends of a window's tile range move only when `now` crosses a multiple of the
    window's tile, so the same merger serves every `now` in `[valid_from, valid_until)`
    (up to one smallest tile: 5 s with a 5m window) and is reused across requests.
    """

    __slots__ = ("_empty", "_features", "valid_from", "valid_until")

    def __init__(self, specs: Iterable[FeatureSpec], now_ms: int) -> None:
        features: list[_Feature] = []
        empty: dict[str, Any] = {}
        ranges: dict[tuple[int, int], _Range] = {}  # windows of one label share theirs
        self.valid_from = now_ms
        self.valid_until = now_ms + 1
        starts: list[int] = []
        ends: list[int] = []
        for spec in specs:
            windows: list[_Window] = []
            for w in spec.windows:
                bounds = w.tile_range(now_ms)
                window = ranges.get(bounds)
                if window is None:
                    window = ranges[bounds] = _Range(*bounds)
                key = f"{spec.name}_{w.label}"
                windows.append((w.label, key, window))
                empty[key] = empty_value(spec.aggregation)
                start = now_ms - now_ms % w.tile_ms
                starts.append(start)
                ends.append(start + w.tile_ms)
            features.append(
                (spec.name, spec.fingerprint, _READERS[spec.aggregation], tuple(windows))
            )
        self._features = tuple(features)
        self._empty = empty
        if starts:
            self.valid_from, self.valid_until = max(starts), min(ends)

    def covers(self, now_ms: int) -> bool:
        """Returns whether this merger's tile ranges are those of `now_ms`."""
        return self.valid_from <= now_ms < self.valid_until

    def __call__(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """Returns {"<feature>_<window>": value}, equal to `serve(record, specs, now_ms)`."""
        stored: Mapping[str, Any] = record.get("features", {})
        # Every key at its empty value; a feature missing, or stored under another
        # fingerprint (before a redeploy changed its meaning), stays so, as in `serve`.
        values = dict(self._empty)
        for name, fingerprint, read, windows in self._features:
            entry = stored.get(name)
            if entry is None or entry["fp"] != fingerprint:
                continue
            state: Mapping[str, Tiles] = entry["w"]
            for label, key, window in windows:
                tiles = state.get(label)
                if tiles:
                    values[key] = read(tiles, window)
        return values
