"""Point-in-time training sets: each requested feature's value for (user, timestamp)
rows, as serving would have answered at that moment, computed in SQL over the archive.

A row (user u, timestamp ts) gets, per feature and window, the aggregation of u's
events of the feature's source that were received at or before ts (what compute could
have applied by then: nothing from the future leaks in) and whose event time lies in
the window's tile-aligned span at ts (`Window.span_ms(ts)`: the tiles `tile_range(ts)`
serving merges), so the value equals serving's answer at ts. Two limits of that
equality, both stated in the README: compute applies an event a few hundred
milliseconds after it is received, so a row within that delay of an event may see it
where serving did not yet; COUNT_DISTINCT is exact here while serving estimates once a
tile holds more than 64 distinct values (HLL, ~2% error).

ClickHouse joins the rows (a Memory table) with the users' events and aggregates per
row and window (`app/db/history.py`), one query per feature; Python only formats the
answer. At most `MAX_ROWS` rows a request (413 beyond): larger sets are split by the
caller (asynchronous jobs are not built).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from app.core.errors import PayloadTooLarge, UnprocessableEntity
from app.db.clickhouse import ClickHouseClientSink
from app.db.history import ArchiveHistory, TrainingWindow
from app.schemas.deployment import ConfigSnapshot
from app.services.rebuild_service import applied_events, in_sql, source_of
from app.tiles.features import FeatureSpec
from app.tiles.record import apply_batch, serve
from app.tiles.windows import Window
from runtime.compute.specs import build_specs

MAX_ROWS = 10_000


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


def _value(aggregation: str, value: Any, count: int, field_name: str | None) -> Any:
    """Returns serving's value for one window from its two SQL columns."""
    match aggregation:
        case "COUNT" | "COUNT_DISTINCT":
            return int(value)
        case "SUM":
            return float(value)
        case "AVG":
            return float(value) / count if count else None
        case "MIN" | "MAX":
            return float(value) if count else None
        case "LAST" | "FIRST":
            return json.loads(value).get(field_name or "") if count else None
    raise ValueError(f"unknown aggregation {aggregation}")


def _empty(aggregation: str) -> Any:
    return {"COUNT": 0, "COUNT_DISTINCT": 0, "SUM": 0.0}.get(aggregation)


class TrainingSetService:
    """Builds training sets from the event archive."""

    def __init__(self, archive: ClickHouseClientSink) -> None:
        self._history = ArchiveHistory(archive)

    async def build(
        self,
        snapshot: ConfigSnapshot,
        rows: Sequence[TrainingRow],
        features: Sequence[str] | None = None,
    ) -> TrainingSet:
        """Returns every requested served key (`{feature}_{window}`, in the order asked;
        all of them, in config order, when `features` is None) for each row.

        Raises TrainingSetTooLarge beyond `MAX_ROWS` rows, UnknownTrainingFeature for a
        key the deployed config does not serve."""
        if len(rows) > MAX_ROWS:
            raise TrainingSetTooLarge(f"{len(rows)} rows: at most {MAX_ROWS} a request")
        specs = build_specs(snapshot).specs
        served = [(s, w) for s in specs for w in s.windows]
        keys = [f"{s.name}_{w.label}" for s, w in served]
        if features is not None:
            unknown = sorted(set(features) - set(keys))
            if unknown:
                raise UnknownTrainingFeature(f"not served by version {snapshot.version}: {unknown}")
            wanted = set(features)
            served = [(s, w) for s, w in served if f"{s.name}_{w.label}" in wanted]
            keys = list(dict.fromkeys(features))  # the columns in the order asked
        values: list[dict[str, Any]] = [{} for _ in rows]
        if rows and served:
            table = [(i, r.user_id, r.ts_ms) for i, r in enumerate(rows)]
            async with self._history.training_rows(table) as rows_table:
                # One query per source event, for all its features that SQL aggregates.
                by_source: dict[tuple[str, str], list[FeatureSpec]] = {}
                for spec in dict.fromkeys(s for s, _ in served):
                    if not in_sql(spec):
                        await self._apply_in_python(snapshot, spec, rows, rows_table, values)
                        continue
                    source = source_of(spec)
                    by_source.setdefault((source.pipeline_id, source.event), []).append(spec)
                for (pipeline_id, event), group in by_source.items():
                    windows = {id(spec): [w for s, w in served if s is spec] for spec in group}
                    parts = [
                        (
                            spec.aggregation.value,
                            spec.field,
                            [TrainingWindow(w.window_ms, w.tile_ms) for w in windows[id(spec)]],
                        )
                        for spec in group
                    ]
                    found = await self._history.window_values(
                        snapshot.project_id, pipeline_id, event, parts, rows_table
                    )
                    self._fill(group, windows, found, values)
        return TrainingSet(
            ["user_id", "timestamp", *keys],
            [
                [r.user_id, r.ts_ms, *(v.get(k) for k in keys)]
                for r, v in zip(rows, values, strict=True)
            ],
        )

    async def _apply_in_python(
        self,
        snapshot: ConfigSnapshot,
        spec: FeatureSpec,
        rows: Sequence[TrainingRow],
        rows_table: str,
        values: list[dict[str, Any]],
    ) -> None:
        """Fills `spec`'s keys for every row with compute's own code: the row user's
        events received by its timestamp, applied in log order at that moment
        (`apply_batch`), then served at it (`serve`). For the features SQL does not
        aggregate (filters, LAST_N, TOP_K, RECENCY)."""
        widest = max(w.window_ms + w.tile_ms for w in spec.windows)
        since = min(r.ts_ms for r in rows) - widest
        key = str(getattr(spec, "source", ""))
        found = await self._history.training_events(
            snapshot.project_id, source_of(spec), rows_table, since
        )
        received = {(str(r[0]), int(r[4]), int(r[5])): int(r[2]) for r in found}
        by_user = applied_events(found, key)
        for row, row_values in zip(rows, values, strict=True):
            events = [
                e
                for e in by_user.get(row.user_id, ())
                if received[(row.user_id, e.partition, e.offset)] <= row.ts_ms
            ]
            record = apply_batch(None, {key: (spec,)}, events, row.ts_ms).record
            row_values.update(serve(record, (spec,), row.ts_ms))

    @staticmethod
    def _fill(
        group: Sequence[FeatureSpec],
        windows: dict[int, list[Window]],
        found: dict[int, tuple[Any, ...]],
        values: list[dict[str, Any]],
    ) -> None:
        """Puts each row's values of `group` (columns in `window_values` order) into
        `values`: the empty value where the row had no candidate event."""
        for i, row_values in enumerate(values):
            columns = found.get(i)
            n = 0
            for spec in group:
                aggregation = spec.aggregation.value
                for w in windows[id(spec)]:
                    key = f"{spec.name}_{w.label}"
                    if columns is None:
                        row_values[key] = _empty(aggregation)
                    else:
                        value, count = columns[n], int(columns[n + 1])
                        row_values[key] = _value(aggregation, value, count, spec.field)
                    n += 2
