"""The read-time tile merge of many records at one `now`: `record.serve`, made cheap.

`runtime/compute/record.serve` is the reference: for each feature and window it
computes the window's tile range, filters and sorts the tiles, and combines them. A
batch read evaluates every record at the same `now`, so the ranges are computed once
per request here instead of once per user and window, and the per-window work is
a dict lookup, a filter and `aggregators.combine` (the maths itself is not repeated
here). `tests/runtime/serving/test_merge.py` checks, with hypothesis, that the result
equals `record.serve` for every aggregation, window, record and time.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from runtime.compute.aggregators import Aggregation, FeatureSpec, combine, empty_value

# (window label, served key, first tile, last tile)
_WindowRange = tuple[str, str, int, int]
# (feature name, fingerprint, aggregation, empty value, its windows)
_FeatureRange = tuple[str, str, Aggregation, Any, tuple[_WindowRange, ...]]


class Merger:
    """Serves records at one `now_ms` for a fixed list of specs.

    Both ends of a window's tile range move only when `now` crosses a multiple of the
    window's tile, so the same merger serves every `now` in `[valid_from, valid_until)`
    (up to one smallest tile: 5 s with a 5m window) and is reused across requests.
    """

    __slots__ = ("_features", "valid_from", "valid_until")

    def __init__(self, specs: Iterable[FeatureSpec], now_ms: int) -> None:
        features: list[_FeatureRange] = []
        self.valid_from = now_ms
        self.valid_until = now_ms + 1
        starts: list[int] = []
        ends: list[int] = []
        for spec in specs:
            windows = tuple(
                (w.label, f"{spec.name}_{w.label}", *w.tile_range(now_ms)) for w in spec.windows
            )
            for w in spec.windows:
                start = now_ms - now_ms % w.tile_ms
                starts.append(start)
                ends.append(start + w.tile_ms)
            empty = empty_value(spec.aggregation)
            features.append((spec.name, spec.fingerprint, spec.aggregation, empty, windows))
        self._features = tuple(features)
        if starts:
            self.valid_from, self.valid_until = max(starts), min(ends)

    def covers(self, now_ms: int) -> bool:
        """Returns whether this merger's tile ranges are those of `now_ms`."""
        return self.valid_from <= now_ms < self.valid_until

    def __call__(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """Returns {"<feature>_<window>": value}, equal to `serve(record, specs, now_ms)`."""
        stored: Mapping[str, Any] = record.get("features", {})
        values: dict[str, Any] = {}
        for name, fingerprint, aggregation, empty, windows in self._features:
            entry = stored.get(name)
            # A feature missing, or stored under another fingerprint (before a redeploy
            # changed its meaning), is served empty, as `serve` does.
            if entry is None or entry["fp"] != fingerprint:
                for _label, key, _lo, _hi in windows:
                    values[key] = empty
                continue
            state: Mapping[str, Mapping[str, Any]] = entry["w"]
            for label, key, lo, hi in windows:
                tiles = state.get(label)
                if not tiles:
                    values[key] = empty
                    continue
                in_range = [(t, p) for k, p in tiles.items() if lo <= (t := int(k)) <= hi]
                if not in_range:
                    values[key] = empty
                    continue
                if len(in_range) > 1:
                    in_range.sort(key=_tile)  # combine takes partials in tile order
                values[key] = combine(aggregation, [p for _, p in in_range])
        return values


def _tile(item: tuple[int, Any]) -> int:
    return item[0]
