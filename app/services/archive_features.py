"""Feature state of users from the event archive, aggregated in SQL per tile: what a
rebuild writes, and what a backfill fills a new or changed feature with.

`ArchiveFeatures.fill` returns, for a range of users, each feature's tiles in the
record layout compute writes (`{"fp", "w": {label: {tile: partial}}}`, see
`app/tiles/record.py`), under the fingerprints compute uses, so serving merges them
with the same code. ClickHouse computes every partial (`app/db/archive_sql.py`); Python
only turns a row into the partial compute would hold, with compute's own code where the
partial depends on the order events came in:

- a COUNT_DISTINCT tile is the exact sorted list up to `sketch.EXACT_LIMIT` values, and
  beyond it the sketch `sketch.add` builds from the tile's values in the order of their
  first event in the log (an HLL sketch's estimate depends on that order, so this is
  the sketch compute holds, not merely one of the same values);
- a TOP_K tile is the exact counts up to `TOP_K_COUNTERS` values, and beyond it the
  Misra-Gries summary `TopK.add` builds from every event of the tile in log order.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from app.db.history import ArchiveHistory, Source, WindowTiles
from app.tiles import sketch
from app.tiles.aggregations import TOP_K_COUNTERS, aggregator
from app.tiles.features import MAX_FUTURE_MS, FeatureSpec


def source_of(spec: FeatureSpec) -> Source:
    """Returns the archive's view of a deployed spec (its `source` is
    `event_key(pipeline_id, event)`; pipeline ids hold no '/')."""
    pipeline_id, _, event = str(getattr(spec, "source", "")).partition("/")
    return Source(
        pipeline_id, event, spec.aggregation.value, spec.field or None, spec.size, spec.filter
    )


def distinct_partial(items_in_log_order: Sequence[str]) -> Any:
    """Returns the COUNT_DISTINCT tile compute holds after seeing these distinct values
    in this order (each at its first event): `sketch.add`, one value after the other."""
    if len(items_in_log_order) <= sketch.EXACT_LIMIT:
        return sorted(items_in_log_order)
    partial: Any = None
    for item in items_in_log_order:
        partial = sketch.add(partial, item)
    return partial


# A TOP_K tile beyond its counters: replayed from its events (`_replay_top_k`).
_OVERFLOW = object()


# Per aggregation: (the per-tile columns from index 3 of a `tile_partials` row, the
# field) -> the tile partial compute would hold, or None when no event of the tile gave
# the aggregation a value (compute writes no tile). One small function each, looked up
# once per feature: a rebuild converts millions of rows.
_PARTIALS: dict[str, Callable[[Sequence[Any], str], Any]] = {
    "COUNT": lambda r, f: r[3],
    "SUM": lambda r, f: float(r[3]) if r[4] else None,
    "AVG": lambda r, f: [float(r[3]), r[4]] if r[4] else None,
    "MIN": lambda r, f: float(r[3]) if r[4] else None,
    "MAX": lambda r, f: float(r[3]) if r[4] else None,
    "LAST": lambda r, f: [r[4], json.loads(r[3]).get(f)] if r[5] else None,
    "FIRST": lambda r, f: [r[4], json.loads(r[3]).get(f)] if r[5] else None,
    "RECENCY": lambda r, f: int(r[3]),
    "COUNT_DISTINCT": lambda r, f: distinct_partial(r[3]),
    "LAST_N": lambda r, f: [[int(t), json.loads(p).get(f)] for t, p in r[3]],
    "TOP_K": lambda r, f: {k: int(c) for k, c in r[4]} if r[3] <= TOP_K_COUNTERS else _OVERFLOW,
}


class ArchiveFeatures:
    """Fills features of users from the archive (see the module docstring)."""

    def __init__(self, history: ArchiveHistory) -> None:
        self._history = history

    async def fill(
        self,
        project_id: str,
        specs: Sequence[FeatureSpec],
        first: str,
        last: str,
        now_ms: int,
        upto: Mapping[int, int] | None = None,
    ) -> dict[str, dict[str, Any]]:
        """Returns {user: {feature name: {"fp", "w": {label: {tile: partial}}}}} for the
        archived users in `[first, last]` (sorting order of user ids): each of `specs`'
        tiles a read at `now_ms` or later can use, from the events stamped up to
        `now_ms + MAX_FUTURE_MS` and, with `upto` ({partition: offset}), sitting at or
        before those offsets in the log (what compute then continues from). A user or a
        feature with no such event is absent. One query per feature (one scan for all
        its windows), plus one for a TOP_K whose tiles passed their counters."""
        out: dict[str, dict[str, Any]] = {}
        for spec in specs:
            source = source_of(spec)
            windows = [WindowTiles(w.tile_ms, w.tile_range(now_ms)[0]) for w in spec.windows]
            until = now_ms + MAX_FUTURE_MS
            rows = await self._history.tile_partials(
                project_id, source, windows, first, last, until, upto
            )
            # Hoisted: a fingerprint is a property computed per call (~10 us).
            fingerprint, labels, name = spec.fingerprint, [w.label for w in spec.windows], spec.name
            convert, field_name = _PARTIALS[source.aggregation], spec.field or ""
            overflow: list[tuple[str, str, str]] = []
            for row in rows:  # (user, window index, tile, *partial columns)
                partial = convert(row, field_name)
                if partial is None:
                    continue
                if partial is _OVERFLOW:
                    overflow.append((row[0], labels[row[1]], str(row[2])))
                    continue
                _put(out, row[0], name, fingerprint, labels[row[1]], str(row[2]), partial)
            if overflow:
                await self._replay_top_k(project_id, spec, windows, until, upto, out, overflow)
        return out

    async def _replay_top_k(
        self,
        project_id: str,
        spec: FeatureSpec,
        windows: Sequence[WindowTiles],
        until: int,
        upto: Mapping[int, int] | None,
        out: dict[str, dict[str, Any]],
        tiles: Sequence[tuple[str, str, str]],
    ) -> None:
        """Puts the Misra-Gries tiles of `tiles` into `out`: compute's `add` over every
        event's value of the tile, in log order."""
        maths = aggregator(spec.aggregation, spec.size)
        labels = [w.label for w in spec.windows]
        wanted = set(tiles)
        rows = await self._history.tile_values_in_order(
            project_id,
            source_of(spec),
            windows,
            sorted({user for user, _, _ in tiles}),
            until,
            TOP_K_COUNTERS,
            upto,
        )
        for user, w, tile, values in rows:
            key = (user, labels[w], str(tile))
            if key not in wanted:
                continue
            partial: Any = None
            for value in values:
                partial = maths.add(partial, 0, value)
            _put(out, user, spec.name, spec.fingerprint, key[1], key[2], partial)


def _put(
    out: dict[str, dict[str, Any]],
    user: str,
    name: str,
    fingerprint: str,
    label: str,
    tile: str,
    partial: Any,
) -> None:
    features = out.get(user)
    if features is None:
        features = out[user] = {}
    entry = features.get(name)
    if entry is None:
        entry = features[name] = {"fp": fingerprint, "w": {}}
    windows_state = entry["w"]
    tiles = windows_state.get(label)
    if tiles is None:
        tiles = windows_state[label] = {}
    tiles[tile] = partial
