"""One class per aggregation: everything one aggregation means, in one place.

Each `Aggregator` answers, for its aggregation, in the manner of quix-streams' window
aggregators (`initialize` / `agg` / `result`):

- `normalise(value)`: an event's field value -> what a partial takes, None to skip it;
- `add(partial, t_ms, value)`: a NEW partial holding one more input (None: empty tile);
  partials are immutable values, never modified in place (`record.py` relies on it);
- `combine(partials)`: the feature value of tile partials given in tile order;
- `read(tiles, span)`: `combine` of the tiles `span` covers;
- `whole(partials)`: `combine` of partials given in ANY order, or `NEEDS_ORDER` when
  their order decides this result (then `combine` takes them in tile order). The
  serving hot path (`merge.py`): a window's tiles usually all lie in the span read
  (compute prunes old ones on write), so they are combined as stored, without a
  sort, with C-level builtins where they can;
- `empty()`: the value served when no event is in the window.

Partials, JSON-compatible so a record round-trips through every store unchanged:

    COUNT int | SUM float | AVG [sum, count] | MIN, MAX float
    LAST, FIRST [t_ms, value] | COUNT_DISTINCT see `sketch.py`
    LAST_N [[t_ms, value], ...] newest first, distinct values, at most N
    TOP_K {value key: count}, at most TOP_K_COUNTERS keys | RECENCY t_ms (the latest)

`finish(value, now_ms)` turns what `combine` gives into the served value where it
depends on the exact read time (RECENCY: seconds since the latest event).

`aggregator(kind, size)` returns the instance for an aggregation (`size` is LAST_N's N
and TOP_K's K). A new aggregation is one class here plus its brute-force oracle in the
tests; compute (`record.py`), serving (`merge.py`) and the config API's validation all
read it from here.
"""

from __future__ import annotations

import functools
import json
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from enum import StrEnum
from operator import itemgetter
from typing import Any, ClassVar

from app.tiles import sketch

Tiles = Mapping[str, Any]


class Aggregation(StrEnum):
    COUNT = "COUNT"
    SUM = "SUM"
    AVG = "AVG"
    MIN = "MIN"
    MAX = "MAX"
    COUNT_DISTINCT = "COUNT_DISTINCT"
    LAST = "LAST"
    FIRST = "FIRST"
    LAST_N = "LAST_N"
    TOP_K = "TOP_K"
    RECENCY = "RECENCY"


class TileSpan:
    """The tiles `lo..hi` a window reads at one `now`; `keys` maps each one's key, as
    compute writes it (`str(tile)`), to its index, so a stored key is tested with one
    set lookup instead of an `int()` (a key written some other way is still parsed and
    compared, so the result is the same for any key). Usually every stored tile is in
    range (compute prunes the others on write): `span.covers(tiles)`, one
    C-level test, then lets `Aggregator.whole` take the map's values as they are."""

    __slots__ = ("covers", "hi", "keys", "lo")

    def __init__(self, lo: int, hi: int) -> None:
        self.lo = lo
        self.hi = hi
        self.keys = {str(tile): tile for tile in range(lo, hi + 1)}
        # `span.covers(tiles)`: every stored tile is in range, one C-level call (a
        # frozenset's issuperset over the map's keys: ~30% cheaper than comparing keys
        # views, which builds a view and tests each key through it).
        self.covers: Callable[[Iterable[str]], bool] = frozenset(self.keys).issuperset

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
        found.sort(key=_first)
        return [p for _, p in found]


NEEDS_ORDER: Any = object()
"""What `Aggregator.whole` returns when only `combine`, in tile order, can answer."""

# LAST/FIRST partials are [event time, value], AVG partials [sum, count].
_first = itemgetter(0)
_second = itemgetter(1)


def as_number(value: Any) -> float | None:
    """Returns `value` as a finite float, or None when SUM/AVG/MIN/MAX must skip it.

    bool is not a number; NaN, infinities and ints too large for a float are skipped
    (one NaN would poison a sum until its tile expires).
    """
    if type(value) is float:  # JSON's numbers are exactly float or int: no isinstance chain
        return value if math.isfinite(value) else None
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


def _same(value: Any) -> Any:
    return value


def _occurrence(value: Any) -> Any:
    return True


class Aggregator(ABC):
    """The maths of one aggregation over time tiles (see the module docstring)."""

    kind: ClassVar[Aggregation]
    # Whether a feature of this aggregation names a field (COUNT ignores it).
    needs_field: ClassVar[bool] = True
    # Whether that field must be a number (checked against the event schema).
    numeric: ClassVar[bool] = False
    # Whether the feature takes a `size` (LAST_N's N, TOP_K's K), and its bounds.
    sized: ClassVar[bool] = False
    MAX_SIZE: ClassVar[int] = 50

    def __init__(self, size: int | None = None) -> None:
        if self.sized and (size is None or not 1 <= size <= self.MAX_SIZE):
            raise ValueError(f"{self.kind} needs a size between 1 and {self.MAX_SIZE}")
        if not self.sized and size is not None:
            raise ValueError(f"{self.kind} takes no size")
        self.size = size

    def empty(self) -> Any:
        """Returns the value served when no event is in the window."""
        return None

    # What a partial takes of an event's field value; None skips it. A plain function
    # shared by the aggregations that normalise alike, so compute (`record.py`) works a
    # value out once per event for all of them (one group per distinct function).
    normalise: Callable[[Any], Any] = staticmethod(_same)

    @abstractmethod
    def add(self, partial: Any, t_ms: int, value: Any) -> Any:
        """Returns a new partial: `partial` (None for an empty tile) plus one input."""

    @abstractmethod
    def combine(self, partials: Sequence[Any]) -> Any:
        """Returns the feature value of `partials`, given in tile order (the empty
        value when there are none). Two tiles never hold the same event time."""

    def read(self, tiles: Tiles, span: TileSpan) -> Any:
        """Returns `combine` of the partials of `tiles` inside `span`, in tile order."""
        if span.covers(tiles):
            value = self.whole(tiles.values())
            if value is not NEEDS_ORDER:
                return value
        return self.combine(span.ordered(tiles))

    def whole(self, partials: Collection[Any]) -> Any:
        """Returns `combine(partials)` for partials given in any order, or NEEDS_ORDER
        when their order decides the result."""
        return NEEDS_ORDER

    # Whether `finish` does anything: readers skip the call when it does not.
    finishes: ClassVar[bool] = False

    def finish(self, value: Any, now_ms: int) -> Any:
        """Returns the served value of what `combine`/`read` gave, read at `now_ms`."""
        return value


class Count(Aggregator):
    kind = Aggregation.COUNT
    needs_field = False

    def empty(self) -> Any:
        return 0

    normalise = staticmethod(_occurrence)  # COUNT counts every event, whatever its field holds

    def add(self, partial: Any, t_ms: int, value: Any) -> Any:
        return (partial or 0) + 1

    def combine(self, partials: Sequence[Any]) -> Any:
        return sum(int(p) for p in partials)

    def whole(self, partials: Collection[Any]) -> Any:
        total = sum(partials)  # the ints compute writes: no int() per tile
        return total if type(total) is int else sum(map(int, partials))


class Sum(Aggregator):
    kind = Aggregation.SUM
    numeric = True

    def empty(self) -> Any:
        return 0.0

    normalise = staticmethod(as_number)

    def add(self, partial: Any, t_ms: int, value: Any) -> Any:
        return (partial or 0.0) + value

    def combine(self, partials: Sequence[Any]) -> Any:
        # fsum: the result does not depend on how events fell into tiles (nor on order).
        return math.fsum(partials)

    def whole(self, partials: Collection[Any]) -> Any:
        return math.fsum(partials)


class Avg(Aggregator):
    kind = Aggregation.AVG
    numeric = True

    normalise = staticmethod(as_number)

    def add(self, partial: Any, t_ms: int, value: Any) -> Any:
        total, count = partial or (0.0, 0)
        return [total + value, count + 1]

    def combine(self, partials: Sequence[Any]) -> Any:
        count = sum(int(p[1]) for p in partials)
        return math.fsum(p[0] for p in partials) / count if count else None

    def whole(self, partials: Collection[Any]) -> Any:
        if len(partials) == 1:  # the usual window of a quiet user: no iterators to build
            for total, count in partials:
                count = int(count)
                return float(total) / count if count else None
        count = sum(map(int, map(_second, partials)))
        return math.fsum(map(_first, partials)) / count if count else None


class Min(Aggregator):
    kind = Aggregation.MIN
    numeric = True

    normalise = staticmethod(as_number)

    def add(self, partial: Any, t_ms: int, value: Any) -> Any:
        return value if partial is None else min(partial, value)

    def combine(self, partials: Sequence[Any]) -> Any:
        return float(min(partials)) if partials else None

    def whole(self, partials: Collection[Any]) -> Any:
        if len(partials) == 1:
            for least in partials:
                return float(least) if least != 0 else NEEDS_ORDER
        if not partials:
            return None
        least = min(partials)
        # 0.0 and -0.0 compare equal, and `combine` keeps the first in tile order.
        return float(least) if least != 0 else NEEDS_ORDER


class Max(Aggregator):
    kind = Aggregation.MAX
    numeric = True

    normalise = staticmethod(as_number)

    def add(self, partial: Any, t_ms: int, value: Any) -> Any:
        return value if partial is None else max(partial, value)

    def combine(self, partials: Sequence[Any]) -> Any:
        return float(max(partials)) if partials else None

    def whole(self, partials: Collection[Any]) -> Any:
        if len(partials) == 1:
            for most in partials:
                return float(most) if most != 0 else NEEDS_ORDER
        if not partials:
            return None
        most = max(partials)
        return float(most) if most != 0 else NEEDS_ORDER


class Last(Aggregator):
    kind = Aggregation.LAST

    def add(self, partial: Any, t_ms: int, value: Any) -> Any:
        # `>=`: on equal times the later-applied event wins.
        return [t_ms, value] if partial is None or t_ms >= partial[0] else partial

    def combine(self, partials: Sequence[Any]) -> Any:
        return max(partials, key=_first)[1] if partials else None

    def whole(self, partials: Collection[Any]) -> Any:
        if len(partials) == 1:
            for partial in partials:
                return partial[1]
        # Event times decide, not tile order (tiles never share a time).
        return max(partials, key=_first)[1] if partials else None


class First(Aggregator):
    kind = Aggregation.FIRST

    def add(self, partial: Any, t_ms: int, value: Any) -> Any:
        # `<`: on equal times the earlier-applied event stays.
        return [t_ms, value] if partial is None or t_ms < partial[0] else partial

    def combine(self, partials: Sequence[Any]) -> Any:
        return min(partials, key=_first)[1] if partials else None

    def whole(self, partials: Collection[Any]) -> Any:
        if len(partials) == 1:
            for partial in partials:
                return partial[1]
        return min(partials, key=_first)[1] if partials else None


class CountDistinct(Aggregator):
    kind = Aggregation.COUNT_DISTINCT

    def empty(self) -> Any:
        return 0

    normalise = staticmethod(distinct_key)

    def add(self, partial: Any, t_ms: int, value: Any) -> Any:
        # The usual tile, a short exact list, without the call into `sketch.add`.
        if type(partial) is list and len(partial) < sketch.EXACT_LIMIT:
            return partial if value in partial else sorted([*partial, value])
        return sketch.add(partial, value)

    def combine(self, partials: Sequence[Any]) -> Any:
        return sketch.count_distinct(partials) if partials else 0

    def whole(self, partials: Collection[Any]) -> Any:
        if len(partials) == 1:
            for partial in partials:
                if type(partial) is list:
                    return len(set(partial))
        union: set[str] = set()
        for p in partials:
            if isinstance(p, str):
                return NEEDS_ORDER  # a sketch: unions are taken in tile order
            union.update(p)  # exact values: the union is a set, in any order
        return len(union)


class LastN(Aggregator):
    """The last N distinct values, newest first (a list; empty when none).

    A tile keeps its newest N distinct values with their times, so the window's newest
    N distinct values are always among its tiles' lists. Values are told apart as
    COUNT_DISTINCT does (`distinct_key`); on equal times the later-applied event wins,
    as with LAST.
    """

    kind = Aggregation.LAST_N
    sized = True

    def empty(self) -> Any:
        return []

    def add(self, partial: Any, t_ms: int, value: Any) -> Any:
        # A string is its own key (the usual product id): no call per entry for it.
        key = value if type(value) is str else distinct_key(value)
        kept: list[Any] = []
        at = -1  # where the new entry goes: before the first one no newer than it
        for entry in partial or ():
            seen = entry[1]
            if (seen if type(seen) is str else distinct_key(seen)) == key:
                if entry[0] > t_ms:
                    return partial  # the value is already there, seen later
                continue  # an older sighting of the value: replaced by this one
            if at < 0 and entry[0] <= t_ms:
                at = len(kept)
            kept.append(entry)
        # Newest first (as `add` always left it): one insertion instead of a sort; of
        # equal times, the one applied later leads.
        kept.insert(len(kept) if at < 0 else at, [t_ms, value])
        return kept[: self.size]

    def combine(self, partials: Collection[Any]) -> Any:  # any order: times decide
        if len(partials) == 1:
            (entries,) = partials  # one tile: already newest first, distinct
        else:
            entries = [e for p in partials for e in p]
            # Newest first, stable (a reversed sort keeps equal keys in order): tiles
            # never share a time, and inside a tile `add` ordered equal times.
            entries.sort(key=_first, reverse=True)
        seen: set[str | None] = set()
        out: list[Any] = []
        size = self.size
        for _, value in entries:
            key = value if type(value) is str else distinct_key(value)
            if key in seen:
                continue
            seen.add(key)
            out.append(value)
            if len(out) == size:
                break
        return out

    def whole(self, partials: Collection[Any]) -> Any:
        return self.combine(partials)


def _newest_first(entry: Sequence[Any]) -> int:
    return -int(entry[0])


# Counters a TOP_K tile keeps: exact while a tile sees at most this many distinct values.
TOP_K_COUNTERS = 256


class TopK(Aggregator):
    """The K most frequent values with their counts: [{"value", "count"}], most frequent
    first (ties by value), empty when no event is in the window.

    Exact while every tile of the window sees at most `TOP_K_COUNTERS` distinct values.
    Beyond, a tile is a Misra-Gries summary of that many counters (a new value with no
    free counter decrements them all), which is mergeable by adding counts: every count
    served is then under by at most n / (TOP_K_COUNTERS + 1), n the window's events, and
    a value more frequent than that bound is never missed. Values are reported by their
    `distinct_key` (text).
    """

    kind = Aggregation.TOP_K
    sized = True

    def empty(self) -> Any:
        return []

    normalise = staticmethod(distinct_key)

    def add(self, partial: Any, t_ms: int, value: Any) -> Any:
        counts = dict(partial or {})
        if value in counts:
            counts[value] += 1
        elif len(counts) < TOP_K_COUNTERS:
            counts[value] = 1
        else:
            counts = {k: c - 1 for k, c in counts.items() if c > 1}
        return counts

    def combine(self, partials: Collection[Any]) -> Any:  # any order: sums
        total: Mapping[str, int]
        if len(partials) == 1:
            (total,) = partials  # read only
        else:
            sums: dict[str, int] = {}
            total = sums
            for p in partials:
                for k, c in p.items():
                    sums[k] = sums.get(k, 0) + c
        # Most frequent first, ties by value: two stable sorts with C-level keys
        # instead of one sort keyed by a Python function.
        best = sorted(total.items())
        best.sort(key=_second, reverse=True)
        return [{"value": k, "count": c} for k, c in best[: self.size]]

    def whole(self, partials: Collection[Any]) -> Any:
        return self.combine(partials)  # sums: tile order cannot matter


class Recency(Aggregator):
    """Seconds from the latest event in the window to the read time (None when none).

    The tiles keep the latest event time; the value slides at read time like a
    window's: it grows by one every second without a write, and goes back to None
    once the latest event left the window. An event stamped ahead of the read time
    (accepted up to MAX_FUTURE_MS ahead) reads as 0.
    """

    kind = Aggregation.RECENCY
    needs_field = False
    finishes = True

    normalise = staticmethod(_occurrence)  # every event is an occurrence, whatever its field

    def add(self, partial: Any, t_ms: int, value: Any) -> Any:
        return t_ms if partial is None or t_ms > partial else partial

    def combine(self, partials: Sequence[Any]) -> Any:
        return max(partials) if partials else None

    def whole(self, partials: Collection[Any]) -> Any:
        return max(partials) if partials else None

    def finish(self, value: Any, now_ms: int) -> Any:
        return None if value is None else max(now_ms - value, 0) / 1000


_CLASSES: dict[Aggregation, type[Aggregator]] = {
    c.kind: c for c in (Count, Sum, Avg, Min, Max, CountDistinct, Last, First, LastN, TopK, Recency)
}
NUMERIC_AGGREGATIONS = frozenset(k for k, c in _CLASSES.items() if c.numeric)
SIZED_AGGREGATIONS = frozenset(k for k, c in _CLASSES.items() if c.sized)
FIELDLESS_AGGREGATIONS = frozenset(k for k, c in _CLASSES.items() if not c.needs_field)


@functools.cache  # at most one per kind and size: 11 kinds, sizes 1..50
def aggregator(kind: Aggregation | str, size: int | None = None) -> Aggregator:
    """Returns the (shared, stateless) aggregator of `kind` with `size`.

    Raises ValueError for an unknown kind, or a size the aggregation does not take."""
    return _CLASSES[Aggregation(kind)](size)


def empty_value(aggregation: Aggregation, size: int | None = None) -> Any:
    """Returns the value served when no event is in the window: 0, [] or None."""
    return aggregator(aggregation, size).empty()


def combine(aggregation: Aggregation, partials: Sequence[Any], size: int | None = None) -> Any:
    """Returns the feature value of tile partials given in tile order."""
    return aggregator(aggregation, size).combine(partials)
