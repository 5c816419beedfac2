"""Point-in-time training sets: each requested feature's value for (user, timestamp)
rows, as serving would have answered at that moment, computed in SQL over the archive.

A row (user u, timestamp ts) gets, per feature and window, the aggregation of u's
events of the feature's source that were received at or before ts (what compute could
have applied by then: nothing from the future leaks in) and whose event time lies in
the window's tile-aligned span at ts (`Window.span_ms(ts)`: the tiles `tile_range(ts)`
serving merges), so the value equals serving's answer at ts. Limits of that
equality, stated in the README: compute applies an event a few hundred milliseconds
after it is received, so a row within that delay of an event may see it where serving
did not yet; TOP_K counts are exact here, while serving's are under once a tile sees
more than TOP_K_COUNTERS values. COUNT_DISTINCT follows serving's rule: exact while
every tile of the window holds at most EXACT_LIMIT values, else the union of the tiles
as compute holds them (sketches built in log order, `distinct_partial`), as serving does.

ClickHouse joins the rows (a Memory table) with the users' events and aggregates per
row and window (`app/db/history.py`, `app/db/archive_sql.py`), filters included, one
query per source for its flat features and one per keyed feature, per chunk of
`CHUNK_USERS` users (a range of the archive's sorting key), so memory is bounded by a
chunk; Python only formats the answer. At most `MAX_ROWS` rows a request (413 beyond).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from app.core.errors import PayloadTooLarge, UnprocessableEntity
from app.db.archive_sql import KEYED
from app.db.clickhouse import ClickHouseClientSink
from app.db.history import ArchiveHistory, TrainingPart, TrainingWindow
from app.schemas.common import USER_ENTITY
from app.schemas.deployment import ConfigSnapshot
from app.services.archive_features import distinct_partial, source_of
from app.tiles import sketch
from app.tiles.derived import DerivedSpec, with_derived
from app.tiles.features import FeatureSpec
from app.tiles.windows import Window
from runtime.compute.specs import build_specs

# Rows one synchronous request takes; more go to a job (`training_job_service`).
MAX_ROWS = 10_000
# Users a chunk's queries cover: the join of their rows with their events is what
# ClickHouse holds in memory at once.
CHUNK_USERS = 2_000


class TrainingSetTooLarge(PayloadTooLarge):
    """More rows than one request takes."""


class UnknownTrainingFeature(UnprocessableEntity):
    """A requested feature key is not served by the deployed config."""


@dataclass(frozen=True, slots=True)
class TrainingRow:
    user_id: str
    ts_ms: int


@dataclass(frozen=True, slots=True)
class TrainingSet:
    """The answer: `columns` are user_id, timestamp, then `{feature}_{window}` keys;
    one list of values per requested row, in the request's order."""

    columns: list[str]
    rows: list[list[Any]]

    def to_csv(self) -> str:
        """Returns RFC 4180 CSV with a header; empty cells for null values, JSON text
        for list or object values."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(self.columns)
        for row in self.rows:
            writer.writerow([_cell(v) for v in row])
        return out.getvalue()

    def to_parquet(self) -> bytes:
        """Returns the set as a Parquet file (pyarrow, which chDB already depends on);
        a column whose values mix types is written as JSON text."""
        import pyarrow as pa  # type: ignore[import-untyped]
        import pyarrow.parquet as pq  # type: ignore[import-untyped]

        arrays = {}
        for i, name in enumerate(self.columns):
            values = [row[i] for row in self.rows]
            try:
                arrays[name] = pa.array(values)
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                arrays[name] = pa.array([None if v is None else json.dumps(v) for v in values])
        sink = io.BytesIO()
        pq.write_table(pa.table(arrays), sink)
        return sink.getvalue()


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, list | dict):
        return json.dumps(value, separators=(",", ":"))
    return value


def _value(aggregation: str, value: Any, count: int, field_name: str | None, ts_ms: int) -> Any:
    """Returns serving's value for one window of a flat aggregation from its two SQL
    columns (`archive_sql.window_value`), read at `ts_ms`."""
    match aggregation:
        case "COUNT":
            return int(value)
        case "SUM":
            return float(value)
        case "AVG":
            return float(value) / count if count else None
        case "MIN" | "MAX":
            return float(value) if count else None
        case "LAST" | "FIRST":
            return json.loads(value).get(field_name or "") if count else None
        case "RECENCY":
            return max(ts_ms - int(value), 0) / 1000 if count else None
    raise ValueError(f"unknown aggregation {aggregation}")


def _keyed_value(spec: FeatureSpec, columns: Sequence[Any]) -> Any:
    """Returns serving's value for one window of a keyed aggregation from its SQL
    columns (`archive_sql.keyed_window`)."""
    match spec.aggregation.value:
        case "TOP_K":
            return [{"value": k, "count": int(c)} for k, c in columns[0]]
        case "LAST_N":
            return [json.loads(p).get(spec.field or "") for p in columns[0]]
        case "COUNT_DISTINCT":
            widest, exact, tiles = columns
            if widest <= sketch.EXACT_LIMIT:
                return int(exact)  # every tile an exact list: so is their union
            # Serving's union of the tiles as compute holds them, in tile order.
            partials = [distinct_partial(items) for _, items in sorted(tiles)]
            return spec.aggregator.combine(partials)
    raise ValueError(f"not a keyed aggregation: {spec.aggregation}")


def user_chunks(rows: Sequence[TrainingRow], chunk_users: int) -> list[tuple[str, str, int]]:
    """Returns `(first, last, rows)`: ranges of at most `chunk_users` of the rows' users
    in sorting order, with how many rows each range holds."""
    per_user: dict[str, int] = {}
    for r in rows:
        per_user[r.user_id] = per_user.get(r.user_id, 0) + 1
    users = sorted(per_user)
    out = []
    for i in range(0, len(users), chunk_users):
        chunk = users[i : i + chunk_users]
        out.append((chunk[0], chunk[-1], sum(per_user[u] for u in chunk)))
    return out


Progress = Callable[[int], Awaitable[None]]


class TrainingSetService:
    """Builds training sets from the event archive."""

    def __init__(self, archive: ClickHouseClientSink, *, chunk_users: int = CHUNK_USERS) -> None:
        self._history = ArchiveHistory(archive)
        self._chunk_users = chunk_users

    def columns(self, snapshot: ConfigSnapshot, features: Sequence[str] | None) -> list[str]:
        """Returns the answer's columns for `features` (all served keys when None).

        Raises UnknownTrainingFeature for a key the deployed config does not serve."""
        return ["user_id", "timestamp", *self._served(snapshot, features)[1]]

    def _served(
        self, snapshot: ConfigSnapshot, features: Sequence[str] | None
    ) -> tuple[list[tuple[FeatureSpec, Window]], list[str], tuple[DerivedSpec, ...]]:
        built = build_specs(snapshot)
        served = [(s, w) for s in built.specs for w in s.windows]
        keys = [f"{s.name}_{w.label}" for s, w in served] + [d.name for d in built.derived]
        if features is None:
            return served, keys, built.derived
        unknown = sorted(set(features) - set(keys))
        if unknown:
            # Entity features (per entity, per user x entity) are served by entity id:
            # a training row is (user, timestamp), so they are refused by name.
            entity = sorted(
                f"{f.name}_{w}"
                for f in snapshot.features
                if f.kind == "aggregate" and f.entity != USER_ENTITY
                for w in f.time_windows
                if f"{f.name}_{w}" in unknown
            )
            if entity:
                raise UnknownTrainingFeature(
                    f"entity features are not in training sets (rows are users): {entity}"
                )
            raise UnknownTrainingFeature(f"not served by version {snapshot.version}: {unknown}")
        derived = tuple(d for d in built.derived if d.name in features)
        # A derived feature's inputs are computed too (a column only when asked for).
        wanted = set(features) | {k for d in derived for k in d.expression.keys}
        served = [(s, w) for s, w in served if f"{s.name}_{w.label}" in wanted]
        return served, list(dict.fromkeys(features)), derived  # columns in the order asked

    async def build(
        self,
        snapshot: ConfigSnapshot,
        rows: Sequence[TrainingRow],
        features: Sequence[str] | None = None,
        *,
        max_rows: int = MAX_ROWS,
        progress: Progress | None = None,
    ) -> TrainingSet:
        """Returns every requested served key (`{feature}_{window}`, in the order asked;
        all of them, in config order, when `features` is None) for each row, computed
        in chunks of users; `progress(rows done)` is awaited after each chunk.

        Raises TrainingSetTooLarge beyond `max_rows` rows, UnknownTrainingFeature for a
        key the deployed config does not serve."""
        if len(rows) > max_rows:
            raise TrainingSetTooLarge(f"{len(rows)} rows: at most {max_rows} a request")
        served, keys, derived = self._served(snapshot, features)
        values: list[dict[str, Any]] = [{} for _ in rows]
        if rows and served:
            table = [(i, r.user_id, r.ts_ms) for i, r in enumerate(rows)]
            done = 0
            async with self._history.training_rows(table) as rows_table:
                for first, last, count in user_chunks(rows, self._chunk_users):
                    await self._chunk(snapshot, served, rows, rows_table, first, last, values)
                    done += count
                    if progress is not None:
                        await progress(done)
        for row_values in values:  # serving's evaluator, over the values at the row's time
            with_derived(row_values, derived, ())
        return TrainingSet(
            ["user_id", "timestamp", *keys],
            [
                [r.user_id, r.ts_ms, *(v.get(k) for k in keys)]
                for r, v in zip(rows, values, strict=True)
            ],
        )

    async def _chunk(
        self,
        snapshot: ConfigSnapshot,
        served: Sequence[tuple[FeatureSpec, Window]],
        rows: Sequence[TrainingRow],
        rows_table: str,
        first: str,
        last: str,
        values: list[dict[str, Any]],
    ) -> None:
        """Fills `values` of the rows of the users in `[first, last]`: one query per
        source event for its flat features, one per keyed feature."""
        in_chunk = [i for i, r in enumerate(rows) if first <= r.user_id <= last]
        by_source: dict[tuple[str, str], list[FeatureSpec]] = {}
        for spec in dict.fromkeys(s for s, _ in served):
            windows = [w for s, w in served if s is spec]
            source = source_of(spec)
            if source.aggregation in KEYED:
                chunk = (rows_table, first, last, in_chunk)
                await self._keyed(snapshot, spec, windows, chunk, values)
                continue
            by_source.setdefault((source.pipeline_id, source.event), []).append(spec)
        for (pipeline_id, event), group in by_source.items():
            windows_of = {id(spec): [w for s, w in served if s is spec] for spec in group}
            parts = [
                TrainingPart(
                    spec.aggregation.value,
                    spec.field,
                    spec.filter,
                    [TrainingWindow(w.window_ms, w.tile_ms) for w in windows_of[id(spec)]],
                )
                for spec in group
            ]
            found = await self._history.window_values(
                snapshot.project_id, pipeline_id, event, parts, rows_table, first, last
            )
            for i in in_chunk:
                columns = found.get(i)
                row_values, n = values[i], 0
                for spec in group:
                    aggregation = spec.aggregation.value
                    for w in windows_of[id(spec)]:
                        key = f"{spec.name}_{w.label}"
                        if columns is None:
                            row_values[key] = spec.aggregator.empty()
                        else:
                            value, count = columns[n], int(columns[n + 1])
                            row_values[key] = _value(
                                aggregation, value, count, spec.field, rows[i].ts_ms
                            )
                        n += 2

    async def _keyed(
        self,
        snapshot: ConfigSnapshot,
        spec: FeatureSpec,
        windows: Sequence[Window],
        chunk: tuple[str, str, str, Sequence[int]],
        values: list[dict[str, Any]],
    ) -> None:
        """Fills `values` of `spec`'s windows for the chunk's rows (`rows_table`, users
        `[first, last]`, the rows' indexes) with one query."""
        rows_table, first, last, in_chunk = chunk
        keys = [f"{spec.name}_{w.label}" for w in windows]
        for i in in_chunk:
            for key in keys:
                values[i][key] = spec.aggregator.empty()
        found = await self._history.keyed_window_values(
            snapshot.project_id,
            source_of(spec),
            [TrainingWindow(w.window_ms, w.tile_ms) for w in windows],
            rows_table,
            first,
            last,
        )
        for row, w, *columns in found:
            values[int(row)][keys[int(w)]] = _keyed_value(spec, columns)
