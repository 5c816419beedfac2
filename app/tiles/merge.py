"""The read-time tile merge of many records at one `now`: `record.serve`, made cheap.

`record.serve` is the reference: for each feature and window it computes the window's
tile range, parses, filters and sorts the tiles, and combines them with the
aggregation's `combine`. A batch read evaluates every record at the same `now`, so
here the work that does not depend on the record is done once per tile boundary
instead of once per user and window:

- each window's range `lo..hi` becomes a `TileSpan`, the set of its tile keys as
  compute writes them, so a map whose tiles are all in range (the usual case:
  compute prunes the others on write) is told by one C-level call (`TileSpan.covers`)
  and combined by the aggregation's `whole`, with no list built and no sort; only the
  results that depend on tile order are computed in tile order (see each
  `Aggregator.whole`);
- the loop runs over the windows a record holds, not those the spec lists: a user with
  a few events holds tiles in two or three of a feature's five windows;
- the answer starts as a copy of the empty answer, so a feature the record does not
  hold (or holds under another fingerprint) costs one dict lookup, a window it does
  not hold nothing.

`tests/tiles/test_merge.py` checks, with hypothesis, that the result equals
`record.serve` for every aggregation, window, record and time. A user x entity feature
(`spec.key` set) is read from the record's `pairs`, one value per key value with an
event in the window (`entities.read_pairs` is its reference).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

from app.tiles.aggregations import NEEDS_ORDER, Tiles, TileSpan
from app.tiles.features import FeatureSpec
from app.tiles.staging import staged_name

# The value of a user x entity feature without any key value (shared: never modified).
_NO_KEYS: Mapping[str, Any] = {}
# (served key, its range, the range's `covers`)
_Window = tuple[str, TileSpan, Callable[[Iterable[str]], bool]]
# (feature name, fingerprint, where a backfill stages it, `whole` and `read` of its
# aggregation, its windows by label)
_Feature = tuple[
    str,
    str,
    str,
    Callable[[Collection[Any]], Any],
    Callable[[Tiles, TileSpan], Any],
    dict[str, _Window],
]


class Merger:
    """Serves records at one `now_ms` for a fixed list of specs.

    Both ends of a window's tile range move only when `now` crosses a multiple of the
    window's tile, so the same merger serves every `now` in `[valid_from, valid_until)`
    (up to one smallest tile: 5 s with a 5m window) and is reused across requests.
    """

    __slots__ = (
        "_empty",
        "_features",
        "_finishing",
        "_pairs",
        "valid_from",
        "valid_until",
    )

    def __init__(self, specs: Iterable[FeatureSpec], now_ms: int) -> None:
        features: list[_Feature] = []
        pairs: list[_Feature] = []
        empty: dict[str, Any] = {}
        ranges: dict[tuple[int, int], TileSpan] = {}  # windows of one label share theirs
        self.valid_from = now_ms
        self.valid_until = now_ms + 1
        starts: list[int] = []
        ends: list[int] = []
        finishing: list[tuple[str, Callable[[Any, int], Any]]] = []
        for spec in specs:
            aggregator = spec.aggregator
            windows: dict[str, _Window] = {}
            for w in spec.windows:
                bounds = w.tile_range(now_ms)
                window = ranges.get(bounds)
                if window is None:
                    window = ranges[bounds] = TileSpan(*bounds)
                key = f"{spec.name}_{w.label}"
                windows[w.label] = (key, window, window.covers)
                empty[key] = aggregator.empty() if spec.key is None else _NO_KEYS
                if aggregator.finishes:
                    finishing.append((key, aggregator.finish))
                start = now_ms - now_ms % w.tile_ms
                starts.append(start)
                ends.append(start + w.tile_ms)
            feature = (
                spec.name,
                spec.fingerprint,
                # Where a backfill may have staged it (`staging.py`): read when the name
                # holds nothing of this fingerprint, until compute moves it there.
                staged_name(spec.name, spec.fingerprint),
                aggregator.whole,
                aggregator.read,
                windows,
            )
            (features if spec.key is None else pairs).append(feature)
        self._features = tuple(features)
        self._pairs = tuple(pairs)
        self._finishing = tuple(finishing)
        self._empty = empty
        if starts:
            self.valid_from, self.valid_until = max(starts), min(ends)

    def covers(self, now_ms: int) -> bool:
        """Returns whether this merger's tile ranges are those of `now_ms`."""
        return self.valid_from <= now_ms < self.valid_until

    def at(self, now_ms: int) -> Callable[[Mapping[str, Any]], dict[str, Any]]:
        """Returns the merge of a record read at `now_ms` (inside `valid_from` ..
        `valid_until`): this merger itself when no value depends on the exact time,
        else one that also finishes those (RECENCY) at `now_ms`."""
        if not self._finishing:
            return self
        return functools.partial(self._finished, now_ms=now_ms)

    def _finished(self, record: Mapping[str, Any], now_ms: int) -> dict[str, Any]:
        values = self(record)
        for key, finish in self._finishing:
            value = values[key]
            if isinstance(value, dict):  # a user x entity feature: {key value: value}
                values[key] = {k: finish(v, now_ms) for k, v in value.items()}
            else:
                values[key] = finish(value, now_ms)
        return values

    def __call__(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """Returns {"<feature>_<window>": value}, equal to `serve(record, specs, now_ms)`
        for every value that does not depend on the exact read time (see `at`)."""
        stored: Mapping[str, Any] = record.get("features", {})
        # Every key at its empty value; a feature missing, or stored under another
        # fingerprint (before a redeploy changed its meaning), stays so, as in `serve`.
        values = dict(self._empty)
        for name, fingerprint, staged, whole, read, windows in self._features:
            entry = stored.get(name)
            if entry is None or entry["fp"] != fingerprint:
                entry = stored.get(staged)
                if entry is None or entry["fp"] != fingerprint:
                    continue
            # The windows the record holds (a short record holds a few of the five), not
            # those the spec lists: no lookup for a window without tiles.
            for label, tiles in entry["w"].items():
                if tiles:
                    window = windows.get(label)
                    if window is None:
                        continue  # a window not selected (or no longer deployed)
                    key, span, covers = window
                    if covers(tiles):
                        value = whole(tiles.values())
                        if value is not NEEDS_ORDER:
                            values[key] = value
                            continue
                    values[key] = read(tiles, span)
        if self._pairs:
            self._read_pairs(record.get("pairs", {}), values)
        return values

    def _read_pairs(self, stored: Mapping[str, Any], values: dict[str, Any]) -> None:
        for name, fingerprint, _, _, read, windows in self._pairs:
            entry = stored.get(name)
            if entry is None or entry["fp"] != fingerprint:
                continue
            for label, (key, span, covers) in windows.items():
                found: dict[str, Any] = {}
                for value, item in entry["k"].items():
                    tiles = item["w"].get(label)
                    # A key value with no event in the window is left out of the answer.
                    if tiles and (covers(tiles) or span.ordered(tiles)):
                        found[value] = read(tiles, span)
                values[key] = found
