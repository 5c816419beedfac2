"""The SQL fragments of the archive's aggregations (`app/db/history.py` runs them).

Every aggregation runs in ClickHouse, per tile (rebuild, backfill) or per training row
and window, so Python receives a few values per (user, tile) or per (row, window),
never the events:

    aggregation      per tile                                  per training row, window
    COUNT            count()                                   countIf
    SUM AVG          sum and count of numbers                  the same, -If
    MIN MAX          min / max and count of numbers            the same, -If
    LAST FIRST       argMax/argMin by (time, partition, offset): that event's properties
    RECENCY          max(t)                                    maxIf(t)
    LAST_N           per value: the newest (t, partition, offset) and its properties;
                     the N newest values
    TOP_K            per value: count; the values with counts  the K most frequent
                     (exact up to TOP_K_COUNTERS values a tile; beyond, the tile's values
                     in log order, for compute's own Misra-Gries `add`)
    COUNT_DISTINCT   the tile's values in the order of their first event in the log
                     (per row and window: per tile, when a tile passes EXACT_LIMIT)

"Keyed" aggregations (LAST_N, TOP_K, COUNT_DISTINCT) group by value first, then by tile
or window. A value is a JSON number that is finite (bool is not a number) for the
numeric ones (`as_number`); a present value is neither missing nor null; a COUNT_DISTINCT
or TOP_K value is `distinct_key`'s text. LAST, FIRST and LAST_N return the winning
event's properties, decoded in Python, so a value is the one compute stores, not a
re-serialised one (ClickHouse writes 1.0 as 1). Ties on time go to the later offset:
the order compute applied them in. A feature's filter is `FilterSql`'s condition.
"""

from __future__ import annotations

from app.tiles.aggregations import TOP_K_COUNTERS

T = "toUnixTimestamp64Milli(event_time)"
RECEIVED = "toUnixTimestamp64Milli(received_at)"
_TYP = "JSONType(properties, {field:String})"
_NUM = "JSONExtractFloat(properties, {field:String})"
_IS_NUM = f"({_TYP} IN ('Int64', 'UInt64', 'Double') AND isFinite({_NUM}))"
_PRESENT = f"({_TYP} != 'Null')"
# `distinct_key`: strings as they are, integral floats as their int, anything else as
# JSON text (objects and arrays are compact here, so counts may differ from compute's
# for such values; a schema field is a string, number or bool).
_DISTINCT = (
    f"multiIf({_TYP} = 'String', JSONExtractString(properties, {{field:String}}), "
    f"{_TYP} = 'Double' AND {_NUM} = floor({_NUM}) AND abs({_NUM}) < 1e15, "
    f"toString(toInt64({_NUM})), JSONExtractRaw(properties, {{field:String}}))"
)
ORDER = "(t, log_partition, log_offset)"
# Per event, computed once in the inner query (JSON is parsed there, not per window or
# per joined training row): the aggregates below use these names.
EXTRACTED = f", {_NUM} AS num, {_IS_NUM} AS is_num, {_PRESENT} AS present, {_DISTINCT} AS dkey"
KEYED = frozenset({"LAST_N", "TOP_K", "COUNT_DISTINCT"})


def extracted(i: int) -> str:
    """`EXTRACTED` for field parameter `field{i}`, its names suffixed by `i`."""
    one = EXTRACTED.replace("{field:String}", f"{{field{i}:String}}")
    for name in ("is_num", "present", "dkey"):
        one = one.replace(f" AS {name}", f" AS {name}{i}")
    return one.replace(" AS num,", f" AS num{i},")


def tile_partial(aggregation: str) -> str:
    """The per-tile columns of a flat aggregation (see the module's table)."""
    match aggregation:
        case "COUNT":
            return "count()"
        case "SUM" | "AVG":
            return "sumIf(num, is_num), countIf(is_num)"
        case "MIN":
            return "minIf(num, is_num), countIf(is_num)"
        case "MAX":
            return "maxIf(num, is_num), countIf(is_num)"
        case "LAST":
            return f"argMaxIf(properties, {ORDER}, present), maxIf(t, present), countIf(present)"
        case "FIRST":
            return f"argMinIf(properties, {ORDER}, present), minIf(t, present), countIf(present)"
        case "RECENCY":
            return "max(t)"
    raise ValueError(f"not a flat aggregation: {aggregation}")


def keyed_tile(aggregation: str, size: int | None) -> tuple[str, str]:
    """(per value, per tile) columns of a keyed aggregation: the inner query groups by
    (user, window, tile, value), the outer by (user, window, tile)."""
    match aggregation:
        case "COUNT_DISTINCT":
            return (
                "min((log_partition, log_offset)) AS first_at",
                "arrayMap(x -> x.2, arraySort(groupArray((first_at, dkey))))",
            )
        case "TOP_K":
            return (
                "count() AS c",
                f"count() AS n, if(n <= {TOP_K_COUNTERS}, groupArray((dkey, c)), [])",
            )
        case "LAST_N":
            return (
                f"argMax(properties, {ORDER}) AS v, max({ORDER}) AS at",
                f"arrayMap(x -> (x.1.1, x.2), "
                "arraySlice(arrayReverseSort(x -> x.1, groupArray((at, v))), "
                f"1, {int(size or 0)}))",
            )
    raise ValueError(f"not a keyed aggregation: {aggregation}")


def window_value(aggregation: str, cond: str, i: int) -> str:
    """The two columns (value, how many events gave one) of one window's value of a
    flat aggregation for a training row, events filtered by `cond`, the field's values
    extracted as field `i` (`extracted`)."""
    num, is_num, present = f"num{i}", f"is_num{i}", f"present{i}"
    match aggregation:
        case "COUNT":
            return f"countIf({cond}), countIf({cond})"
        case "SUM" | "AVG":
            return f"sumIf({num}, {cond} AND {is_num}), countIf({cond} AND {is_num})"
        case "MIN":
            return f"minIf({num}, {cond} AND {is_num}), countIf({cond} AND {is_num})"
        case "MAX":
            return f"maxIf({num}, {cond} AND {is_num}), countIf({cond} AND {is_num})"
        case "LAST":
            p = f"{cond} AND {present}"
            return f"argMaxIf(properties, {ORDER}, {p}), countIf({p})"
        case "FIRST":
            p = f"{cond} AND {present}"
            return f"argMinIf(properties, {ORDER}, {p}), countIf({p})"
        case "RECENCY":
            return f"maxIf(t, {cond}), countIf({cond})"
    raise ValueError(f"not a flat aggregation: {aggregation}")


def keyed_window(aggregation: str, size: int | None) -> tuple[str, str | None, str]:
    """(per value, per tile or None, per window) columns of a keyed aggregation for
    training rows: the queries group by (row, window, [tile,] value), then (row, window,
    tile) when there is a per-tile level, then (row, window). TOP_K's and LAST_N's window
    values do not depend on how events fell into tiles; COUNT_DISTINCT's do (serving
    estimates once a tile holds more than EXACT_LIMIT values)."""
    match aggregation:
        case "COUNT_DISTINCT":
            return (
                "min((log_partition, log_offset)) AS first_at",
                "count() AS n, "
                "arrayMap(x -> x.2, arraySort(groupArray((first_at, dkey)))) AS items",
                "max(n) AS widest, length(groupUniqArrayArray(items)), "
                "if(widest > {exact_limit:UInt32}, groupArray((tile, items)), [])",
            )
        case "TOP_K":
            return (
                "count() AS c",
                None,
                "arraySlice(arraySort(x -> (-toInt64(x.2), x.1), groupArray((dkey, c))), "
                f"1, {int(size or 0)})",
            )
        case "LAST_N":
            return (
                f"argMax(properties, {ORDER}) AS v, max({ORDER}) AS at",
                None,
                "arrayMap(x -> x.2, arraySlice(arrayReverseSort(x -> x.1, "
                f"groupArray((at, v))), 1, {int(size or 0)}))",
            )
    raise ValueError(f"not a keyed aggregation: {aggregation}")
