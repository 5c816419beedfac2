"""Queries over the event archive that rebuilds and training sets run (ClickHouse SQL).

Every query reads `event_archive FINAL` (one row per event, the first copy) of one
feature's source (pipeline, event), so the work happens where the events are: an
answer is a few rows per user and tile, or per training row, never the events.

What SQL computes per aggregation, and what is left to Python:

    aggregation         per tile (rebuild)                 per training row and window
    COUNT               count()                            countIf
    SUM AVG MIN MAX     sum, count, min, max of numbers    the same, -If
    LAST FIRST          argMax/argMin by (time, partition, offset): that event's properties
    COUNT_DISTINCT      groupUniqArray of canonical values uniqExact
                        (the sketch is built in Python)

A numeric value is a JSON number that is finite (bool is not a number), as
`as_number` says; a present value is one that is neither missing nor null. LAST/FIRST
return the winning event's properties, decoded in Python, so the value is the one
compute stores, not a re-serialised one. Ties on time go to the later (LAST) or
earlier (FIRST) offset: the order compute applied them in.
"""

# ruff: noqa: S608
# Every value reaches the SQL as a bound parameter ({name:Type}); the f-strings only
# put together fixed fragments, integers and table names this module makes.

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from app.db.clickhouse import ClickHouseClientSink

_T = "toUnixTimestamp64Milli(event_time)"
_R = "toUnixTimestamp64Milli(received_at)"
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
_ORDER = "(t, log_partition, log_offset)"
# Per event, computed once in the inner query (JSON is parsed there, not per window or
# per joined training row): the aggregates below use these names.
_EXTRACTED = f", {_NUM} AS num, {_IS_NUM} AS is_num, {_PRESENT} AS present, {_DISTINCT} AS dkey"


@dataclass(frozen=True, slots=True)
class Source:
    """One feature as the archive sees it: which events feed it, and how."""

    pipeline_id: str
    event: str
    aggregation: str
    field: str | None


def _events(source: Source, where: str, extra: str = _EXTRACTED) -> str:
    """The source's events (one row each), with `t` and `received` in epoch ms and the
    field's value extracted (`_EXTRACTED`), or other `extra` columns."""
    return (
        f"SELECT user_id, {_T} AS t, {_R} AS received, properties, log_partition, "
        f"log_offset{extra} FROM event_archive FINAL "
        "WHERE project_id = {project:String} AND pipeline_id = {pipeline:String} "
        f"AND event = {{event:String}} AND {where}"
    )


def _params(project_id: str, source: Source, **more: Any) -> dict[str, Any]:
    return {
        "project": project_id,
        "pipeline": source.pipeline_id,
        "event": source.event,
        "field": source.field or "",
        **more,
    }


def _tile_partial(aggregation: str) -> str:
    """The per-tile columns of `aggregation` (see the module's table)."""
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
            return f"argMaxIf(properties, {_ORDER}, present), maxIf(t, present), countIf(present)"
        case "FIRST":
            return f"argMinIf(properties, {_ORDER}, present), minIf(t, present), countIf(present)"
        case "COUNT_DISTINCT":
            return "groupUniqArrayIf(dkey, present), countIf(present)"
    raise ValueError(f"unknown aggregation {aggregation}")


def _window_value(aggregation: str, cond: str, i: int) -> str:
    """The two columns (value, how many events gave one) of one window's value for a
    training row, events filtered by `cond`, the field's values extracted as field `i`
    (`_fields_extracted`)."""
    num, is_num, present, dkey = f"num{i}", f"is_num{i}", f"present{i}", f"dkey{i}"
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
            return f"argMaxIf(properties, {_ORDER}, {p}), countIf({p})"
        case "FIRST":
            p = f"{cond} AND {present}"
            return f"argMinIf(properties, {_ORDER}, {p}), countIf({p})"
        case "COUNT_DISTINCT":
            return f"uniqExactIf({dkey}, {cond} AND {present}), toUInt64(0)"
    raise ValueError(f"unknown aggregation {aggregation}")


def _fields_extracted(count: int) -> str:
    """`_EXTRACTED` for fields 0..count-1 (parameters `field0`...), suffixed by index."""
    out = []
    for i in range(count):
        one = _EXTRACTED.replace("{field:String}", f"{{field{i}:String}}")
        for name in ("is_num", "present", "dkey"):
            one = one.replace(f" AS {name}", f" AS {name}{i}")
        out.append(one.replace(" AS num,", f" AS num{i},"))
    return "".join(out)


@dataclass(frozen=True, slots=True)
class WindowTiles:
    """The tile size of one window and the first tile a rebuild keeps."""

    tile_ms: int
    lo: int


@dataclass(frozen=True, slots=True)
class TrainingWindow:
    """One window as a training row reads it: `[start, end)` relative to the row's ts:
    start = ((ts - window_ms) div tile_ms) * tile_ms, end = (ts div tile_ms + 1) * tile_ms
    (`Window.span_ms`)."""

    window_ms: int
    tile_ms: int


class ArchiveHistory:
    """The rebuild and training-set queries over one archive client."""

    def __init__(self, archive: ClickHouseClientSink) -> None:
        self._archive = archive

    async def projects(self) -> list[str]:
        """Returns every project with archived events."""
        rows = await self._archive.query_rows(
            "SELECT DISTINCT project_id FROM event_archive ORDER BY project_id"
        )
        return [str(r[0]) for r in rows]

    async def user_page(self, project_id: str, after: str | None, limit: int) -> list[str]:
        """Returns up to `limit` of the project's archived user ids after `after`, in
        order (keyset paging: each page is a range scan of the sorting key)."""
        rows = await self._archive.query_rows(
            "SELECT DISTINCT user_id FROM event_archive WHERE project_id = {project:String} "
            "AND user_id > {after:String} ORDER BY user_id LIMIT {limit:UInt32}",
            {"project": project_id, "after": after or "", "limit": limit},
        )
        return [str(r[0]) for r in rows]

    async def user_offsets(
        self, project_id: str, first: str, last: str
    ) -> dict[str, dict[int, int]]:
        """Returns, per user in `[first, last]`, the highest archived offset of each
        partition holding their events (every copy counts: compute skips a later copy
        by offset as well as by id)."""
        rows = await self._archive.query_rows(
            "SELECT user_id, log_partition, max(log_offset) FROM event_archive "
            "WHERE project_id = {project:String} AND user_id >= {first:String} "
            "AND user_id <= {last:String} GROUP BY user_id, log_partition",
            {"project": project_id, "first": first, "last": last},
        )
        out: dict[str, dict[int, int]] = {}
        for user, partition, offset in rows:
            out.setdefault(str(user), {})[int(partition)] = int(offset)
        return out

    async def recent_ids(
        self, project_id: str, first: str, last: str, since_ms: int, limit: int
    ) -> dict[str, list[str]]:
        """Returns, per user in `[first, last]`, the ids of events received at or after
        `since_ms` (at most `limit` a user, the newest)."""
        rows = await self._archive.query_rows(
            "SELECT user_id, groupArray({limit:UInt32})(event_id) FROM ("
            f"SELECT user_id, event_id, {_R} AS received FROM event_archive FINAL "
            "WHERE project_id = {project:String} AND user_id >= {first:String} "
            "AND user_id <= {last:String} AND received >= {since:Int64} "
            "ORDER BY user_id, received DESC) GROUP BY user_id",
            {
                "project": project_id,
                "first": first,
                "last": last,
                "since": since_ms,
                "limit": limit,
            },
        )
        return {str(user): [str(i) for i in ids] for user, ids in rows}

    async def tile_partials(
        self,
        project_id: str,
        source: Source,
        windows: Sequence[WindowTiles],
        first: str,
        last: str,
        until_ms: int,
    ) -> list[tuple[Any, ...]]:
        """Returns `(user_id, window index, tile, *partial columns)` for every tile of
        each of `windows` from its `lo` on holding events of `source` stamped at most
        `until_ms`, for the users in `[first, last]`: one scan for all the windows (each
        event is repeated once per window by ARRAY JOIN, after its field was parsed)."""
        partial = _tile_partial(source.aggregation)
        users = "user_id >= {first:String} AND user_id <= {last:String}"
        spans = ", ".join(f"({i}, {w.tile_ms}, {w.lo * w.tile_ms})" for i, w in enumerate(windows))
        sql = (
            f"SELECT user_id, win.1 AS w, intDiv(t, win.2) AS tile, {partial} "
            f"FROM ({_events(source, users)}) ARRAY JOIN [{spans}] AS win "
            "WHERE t >= win.3 AND t <= {until:Int64} "
            "GROUP BY user_id, w, tile"
        )
        params = _params(project_id, source, first=first, last=last, until=until_ms)
        return await self._archive.query_rows(sql, params)

    async def range_events(
        self, project_id: str, source: Source, first: str, last: str, since_ms: int
    ) -> list[tuple[Any, ...]]:
        """Returns `(user_id, t, received, properties, partition, offset, event_id)` of
        the source's events stamped at or after `since_ms` of the users in
        `[first, last]`, in log order per user: for the features SQL does not aggregate
        (filters, LAST_N, TOP_K, RECENCY), which the pure tile code applies in Python."""
        users = "user_id >= {first:String} AND user_id <= {last:String}"
        return await self._source_events(
            project_id, source, users, {"first": first, "last": last}, since_ms
        )

    async def training_events(
        self, project_id: str, source: Source, rows_table: str, since_ms: int
    ) -> list[tuple[Any, ...]]:
        """As `range_events`, for the users of a `training_rows` table."""
        users = f"user_id IN (SELECT user_id FROM {rows_table})"
        return await self._source_events(project_id, source, users, {}, since_ms)

    async def _source_events(
        self,
        project_id: str,
        source: Source,
        users: str,
        parameters: dict[str, Any],
        since_ms: int,
    ) -> list[tuple[Any, ...]]:
        sql = (
            f"SELECT user_id, t, received, properties, log_partition, log_offset, event_id "
            f"FROM ({_events(source, users, ', event_id')}) WHERE t >= {{since:Int64}} "
            "ORDER BY user_id, log_partition, log_offset"
        )
        params = _params(project_id, source, since=since_ms, **parameters)
        return await self._archive.query_rows(sql, params)

    async def last_event_ms(
        self, project_id: str, sources: Sequence[Source], first: str, last: str, since_ms: int
    ) -> dict[str, int]:
        """Returns, per user in `[first, last]`, the newest event time at or after
        `since_ms` among `sources`' events."""
        if not sources:
            return {}
        match = " OR ".join(
            f"(pipeline_id = {{p{i}:String}} AND event = {{e{i}:String}})"
            for i in range(len(sources))
        )
        params: dict[str, Any] = {"project": project_id, "first": first, "last": last}
        for i, s in enumerate(sources):
            params[f"p{i}"], params[f"e{i}"] = s.pipeline_id, s.event
        params["since"] = since_ms
        rows = await self._archive.query_rows(
            f"SELECT user_id, max({_T}) FROM event_archive FINAL "
            "WHERE project_id = {project:String} AND user_id >= {first:String} "
            f"AND user_id <= {{last:String}} AND ({match}) AND {_T} >= {{since:Int64}} "
            "GROUP BY user_id",
            params,
        )
        return {str(u): int(t) for u, t in rows}

    @asynccontextmanager
    async def training_rows(self, rows: Sequence[tuple[int, str, int]]) -> AsyncIterator[str]:
        """Yields the name of a table holding `(row, user_id, ts)`; drops it after.

        A plain Memory table, not a TEMPORARY one: temporary tables live in an HTTP
        session, which clickhouse-connect does not keep across queries."""
        table = f"training_rows_{uuid.uuid4().hex}"
        await self._archive.command(
            f"CREATE TABLE {table} (row UInt32, user_id String, ts Int64) ENGINE = Memory"
        )
        try:
            await self._archive.insert_rows(table, rows, ("row", "user_id", "ts"))
            yield table
        finally:
            await self._archive.command(f"DROP TABLE IF EXISTS {table}")

    async def window_values(
        self,
        project_id: str,
        pipeline_id: str,
        event: str,
        parts: Sequence[tuple[str, str | None, Sequence[TrainingWindow]]],
        rows_table: str,
    ) -> dict[int, tuple[Any, ...]]:
        """Returns, per training row with at least one candidate event, two columns
        (value, count; see `_window_value`) per window of each part (aggregation, field,
        windows), in order, over the events of (pipeline, event) received at or before
        the row's ts and stamped in the window's span at ts. One scan for every feature
        of that source. Rows without any candidate event are absent (values empty)."""
        fields = list(dict.fromkeys(field or "" for _, field, _ in parts))
        windows = [w for _, _, ws in parts for w in ws]
        widest = max(w.window_ms + w.tile_ms for w in windows)
        longest_tile = max(w.tile_ms for w in windows)
        columns = []
        for aggregation, field, part_windows in parts:
            for w in part_windows:
                start = f"intDiv(r.ts - {w.window_ms}, {w.tile_ms}) * {w.tile_ms}"
                end = f"(intDiv(r.ts, {w.tile_ms}) + 1) * {w.tile_ms}"
                cond = f"(t >= {start} AND t < {end})"
                columns.append(_window_value(aggregation, cond, fields.index(field or "")))
        where = f"user_id IN (SELECT user_id FROM {rows_table})"
        source = Source(pipeline_id, event, "", None)
        sql = (
            f"SELECT r.row, {', '.join(columns)} "
            f"FROM ({_events(source, where, _fields_extracted(len(fields)))}) AS e "
            f"INNER JOIN {rows_table} AS r ON e.user_id = r.user_id "
            f"WHERE e.received <= r.ts AND e.t >= r.ts - {widest} "
            f"AND e.t < r.ts + {longest_tile} GROUP BY r.row"
        )
        params = _params(project_id, source) | {f"field{i}": f for i, f in enumerate(fields)}
        result = await self._archive.query_rows(sql, params)
        return {int(row[0]): tuple(row[1:]) for row in result}
