"""Queries over the event archive that rebuilds, backfills and training sets run.

Every query reads `event_archive FINAL` (one row per event, the first copy) of one
feature's source (pipeline, event), filtered by the feature's filter in SQL, and
aggregates there (`app/db/archive_sql.py` says how, per aggregation): an answer is a
few values per user and tile, or per training row and window, never the events.
Users go in ranges of the sorting key (`project_id, user_id, ...`), so each query is a
range scan and a chunk's memory is bounded by that chunk's users.
"""

# ruff: noqa: S608
# Every value reaches the SQL as a bound parameter ({name:Type}); the f-strings only
# put together fixed fragments, integers and table names this module makes.

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from app.db.archive_sql import (
    EXTRACTED,
    KEYED,
    RECEIVED,
    T,
    extracted,
    keyed_tile,
    keyed_window,
    tile_partial,
    window_value,
)
from app.db.clickhouse import ClickHouseClientSink
from app.db.filter_sql import FilterSql
from app.tiles.filters import FeatureFilter
from app.tiles.sketch import EXACT_LIMIT

_USERS = "user_id >= {first:String} AND user_id <= {last:String}"


@dataclass(frozen=True, slots=True)
class Source:
    """One feature as the archive sees it: which events feed it, and how."""

    pipeline_id: str
    event: str
    aggregation: str
    field: str | None
    size: int | None = None
    filter: FeatureFilter | None = None


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


@dataclass(frozen=True, slots=True)
class TrainingPart:
    """One flat feature of a source, as `window_values` computes it."""

    aggregation: str
    field: str | None
    filter: FeatureFilter | None
    windows: Sequence[TrainingWindow]


def upto_sql(offsets: Mapping[int, int] | None) -> str:
    """The condition "the event sits at or before `offsets[partition]` in the log"
    (an event of a partition not listed is after), "1" when `offsets` is None: the
    seam a backfill hands to compute, which skips events by offset."""
    if offsets is None:
        return "1"
    arms = [f"log_partition = {int(p)}, log_offset <= {int(o)}" for p, o in offsets.items()]
    return f"multiIf({', '.join(arms)}, 0)" if arms else "0"


def _events(source: Source, where: str, extra: str = EXTRACTED) -> str:
    """The source's events (one row each), with `t` and `received` in epoch ms and the
    field's value extracted (`EXTRACTED`), or other `extra` columns."""
    return (
        f"SELECT user_id, {T} AS t, {RECEIVED} AS received, properties, log_partition, "
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

    async def user_count(self, project_id: str) -> int:
        """Returns how many distinct users the project has archived events of."""
        rows = await self._archive.query_rows(
            "SELECT uniqExact(user_id) FROM event_archive WHERE project_id = {project:String}",
            {"project": project_id},
        )
        return int(rows[0][0]) if rows else 0

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
            f"SELECT user_id, event_id, {RECEIVED} AS received FROM event_archive FINAL "
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
        upto: Mapping[int, int] | None = None,
    ) -> list[tuple[Any, ...]]:
        """Returns `(user_id, window index, tile, *partial columns)` for every tile of
        each of `windows` from its `lo` on holding events of `source` (those its filter
        accepts, stamped at most `until_ms`, at or before `upto` in the log) of the users
        in `[first, last]`: one scan for all the windows (each event is repeated once
        per window by ARRAY JOIN, after its field was parsed). The partial columns are
        `archive_sql`'s, per aggregation."""
        flt = FilterSql()
        where = f"{_USERS} AND {flt.condition(source.filter)} AND {upto_sql(upto)}"
        spans = ", ".join(f"({i}, {w.tile_ms}, {w.lo * w.tile_ms})" for i, w in enumerate(windows))
        scan = (
            f"FROM ({_events(source, where)}) ARRAY JOIN [{spans}] AS win "
            "WHERE t >= win.3 AND t <= {until:Int64}"
        )
        keys = "user_id, win.1 AS w, intDiv(t, win.2) AS tile"
        if source.aggregation in KEYED:
            per_value, per_tile = keyed_tile(source.aggregation, source.size)
            sql = (
                f"SELECT user_id, w, tile, {per_tile} FROM ("
                f"SELECT {keys}, dkey, {per_value} {scan} AND present "
                "GROUP BY user_id, w, tile, dkey) GROUP BY user_id, w, tile"
            )
        else:
            partial = tile_partial(source.aggregation)
            sql = f"SELECT {keys}, {partial} {scan} GROUP BY user_id, w, tile"
        params = _params(project_id, source, first=first, last=last, until=until_ms)
        return await self._archive.query_rows(sql, params | flt.params)

    async def tile_values_in_order(
        self,
        project_id: str,
        source: Source,
        windows: Sequence[WindowTiles],
        users: Sequence[str],
        until_ms: int,
        more_than: int,
        upto: Mapping[int, int] | None = None,
    ) -> list[tuple[Any, ...]]:
        """Returns `(user_id, window index, tile, [value, ...])` of the tiles (as
        `tile_partials` selects them) of `users` holding more than `more_than` distinct
        values: every event's value in log order, for the aggregations whose tile state
        depends on that order (a TOP_K tile beyond its counters)."""
        flt = FilterSql()
        where = (
            "user_id IN {users:Array(String)} "
            f"AND {flt.condition(source.filter)} AND {upto_sql(upto)}"
        )
        spans = ", ".join(f"({i}, {w.tile_ms}, {w.lo * w.tile_ms})" for i, w in enumerate(windows))
        sql = (
            "SELECT user_id, win.1 AS w, intDiv(t, win.2) AS tile, "
            "arrayMap(x -> x.3, arraySort(groupArray((log_partition, log_offset, dkey)))) "
            f"FROM ({_events(source, where)}) ARRAY JOIN [{spans}] AS win "
            "WHERE t >= win.3 AND t <= {until:Int64} AND present "
            "GROUP BY user_id, w, tile HAVING uniqExact(dkey) > {more:UInt32}"
        )
        params = _params(project_id, source, users=list(users), until=until_ms, more=more_than)
        return await self._archive.query_rows(sql, params | flt.params)

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
            f"SELECT user_id, max({T}) FROM event_archive FINAL "
            "WHERE project_id = {project:String} AND user_id >= {first:String} "
            f"AND user_id <= {{last:String}} AND ({match}) AND {T} >= {{since:Int64}} "
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
        parts: Sequence[TrainingPart],
        rows_table: str,
        first: str,
        last: str,
    ) -> dict[int, tuple[Any, ...]]:
        """Returns, per training row of the users in `[first, last]` with at least one
        candidate event, two columns (value, count; see `archive_sql.window_value`) per
        window of each flat part, in order, over the events of (pipeline, event) its
        filter accepts, received at or before the row's ts and stamped in the window's
        span at ts. One scan for every flat feature of that source. Rows without any
        candidate event are absent (values empty)."""
        fields = list(dict.fromkeys(p.field or "" for p in parts))
        filters = list(dict.fromkeys(p.filter for p in parts if p.filter is not None))
        flt = FilterSql()
        passes = "".join(f", {flt.condition(f)} AS pass{i}" for i, f in enumerate(filters))
        windows = [w for p in parts for w in p.windows]
        widest = max(w.window_ms + w.tile_ms for w in windows)
        longest_tile = max(w.tile_ms for w in windows)
        columns = []
        for part in parts:
            accepted = "1" if part.filter is None else f"pass{filters.index(part.filter)}"
            for w in part.windows:
                start = f"intDiv(r.ts - {w.window_ms}, {w.tile_ms}) * {w.tile_ms}"
                end = f"(intDiv(r.ts, {w.tile_ms}) + 1) * {w.tile_ms}"
                cond = f"(t >= {start} AND t < {end} AND {accepted})"
                columns.append(window_value(part.aggregation, cond, fields.index(part.field or "")))
        where = f"{_USERS} AND user_id IN (SELECT user_id FROM {rows_table})"
        extra = "".join(extracted(i) for i in range(len(fields))) + passes
        source = Source(pipeline_id, event, "", None)
        sql = (
            f"SELECT r.row, {', '.join(columns)} "
            f"FROM ({_events(source, where, extra)}) AS e "
            f"INNER JOIN (SELECT * FROM {rows_table} WHERE {_USERS}) AS r "
            "ON e.user_id = r.user_id "
            f"WHERE e.received <= r.ts AND e.t >= r.ts - {widest} "
            f"AND e.t < r.ts + {longest_tile} GROUP BY r.row"
        )
        params = _params(project_id, source, first=first, last=last)
        params |= {f"field{i}": f for i, f in enumerate(fields)} | flt.params
        result = await self._archive.query_rows(sql, params)
        return {int(row[0]): tuple(row[1:]) for row in result}

    async def keyed_window_values(
        self,
        project_id: str,
        source: Source,
        windows: Sequence[TrainingWindow],
        rows_table: str,
        first: str,
        last: str,
    ) -> list[tuple[Any, ...]]:
        """Returns `(row, window index, *columns)` (`archive_sql.keyed_window`) of a
        keyed feature for the training rows of the users in `[first, last]` that have
        candidate events in that window (the events its filter accepts with a value,
        received at or before the row's ts and stamped in the window's span at ts)."""
        flt = FilterSql()
        where = f"{_USERS} AND user_id IN (SELECT user_id FROM {rows_table}) AND " + (
            flt.condition(source.filter)
        )
        spans = ", ".join(f"({i}, {w.window_ms}, {w.tile_ms})" for i, w in enumerate(windows))
        joined = (
            "SELECT r.row AS row, r.ts AS ts, e.t AS t, e.dkey AS dkey, "
            "e.properties AS properties, e.log_partition AS log_partition, "
            "e.log_offset AS log_offset "
            f"FROM ({_events(source, where)}) AS e "
            f"INNER JOIN (SELECT * FROM {rows_table} WHERE {_USERS}) AS r "
            "ON e.user_id = r.user_id WHERE e.received <= r.ts AND e.present"
        )
        per_value, per_tile, per_window = keyed_window(source.aggregation, source.size)
        scan = (
            f"FROM ({joined}) ARRAY JOIN [{spans}] AS win "
            "WHERE t >= intDiv(ts - win.2, win.3) * win.3 AND t < (intDiv(ts, win.3) + 1) * win.3"
        )
        if per_tile is None:
            sql = (
                f"SELECT row, w, {per_window} FROM (SELECT row, win.1 AS w, dkey, {per_value} "
                f"{scan} GROUP BY row, w, dkey) GROUP BY row, w"
            )
        else:
            sql = (
                f"SELECT row, w, {per_window} FROM (SELECT row, w, tile, {per_tile} FROM ("
                f"SELECT row, win.1 AS w, intDiv(t, win.3) AS tile, dkey, {per_value} "
                f"{scan} GROUP BY row, w, tile, dkey) GROUP BY row, w, tile) GROUP BY row, w"
            )
        params = _params(project_id, source, first=first, last=last, exact_limit=EXACT_LIMIT)
        return await self._archive.query_rows(sql, params | flt.params)
