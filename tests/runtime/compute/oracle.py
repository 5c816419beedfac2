"""A brute-force oracle for compute's end results, and config/event builders.

The oracle knows nothing of tiles: for each feature and window it takes the raw events
whose time lies in the span a read at `now` covers (`Window.span_ms`: `(now - W, now]`
widened to whole tiles) and aggregates them from scratch. It matches what compute
stores as long as every event was applied at a clock no later than `now` (an event
late at apply time is older than the span at any later `now`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from app.schemas.deployment import AggregateFeatureSnapshot, ConfigSnapshot, PipelineSnapshot
from app.schemas.event import EventMessage
from app.schemas.pipeline import EventDefinition, EventField
from app.tiles.windows import parse_window
from tests.factories import new_id

AGGREGATIONS = ("COUNT", "SUM", "AVG", "MIN", "MAX", "COUNT_DISTINCT", "LAST", "FIRST")
FIELD_FOR = {
    "COUNT": None,
    "SUM": "price",
    "AVG": "price",
    "MIN": "price",
    "MAX": "price",
    "COUNT_DISTINCT": "product_id",
    "LAST": "product_id",
    "FIRST": "product_id",
}


@dataclass(frozen=True)
class RawEvent:
    """One event as produced, in production order."""

    user_id: str
    pipeline_id: str
    event: str
    t_ms: int
    properties: dict[str, Any] = field(default_factory=dict)


def pipeline(pipeline_id: str, *events: str, status: str = "active") -> PipelineSnapshot:
    fields = [
        EventField(name="product_id", type="string"),
        EventField(name="price", type="number"),
    ]
    return PipelineSnapshot(
        id=pipeline_id,
        name=f"p-{pipeline_id[-6:]}",
        category="behavioral",
        status=status,
        events=[EventDefinition(name=e, fields=fields) for e in events],
    )


def feature(
    name: str,
    pipeline_id: str,
    aggregation: str,
    windows: list[str],
    *,
    source_event: str = "add_to_cart",
    field_name: str | None = None,
    enabled: bool = True,
) -> AggregateFeatureSnapshot:
    return AggregateFeatureSnapshot(
        id=new_id(),
        name=name,
        pipeline_id=pipeline_id,
        source_event=source_event,
        aggregation=aggregation,
        field=field_name if field_name is not None else FIELD_FOR[aggregation],
        time_windows=windows,
        enabled=enabled,
    )


def all_aggregations(pipeline_id: str, windows: list[str]) -> list[AggregateFeatureSnapshot]:
    """One feature per aggregation on `add_to_cart`, named after it."""
    return [feature(a.lower(), pipeline_id, a, windows) for a in AGGREGATIONS]


def config(
    project_id: str,
    version: int,
    pipelines: list[PipelineSnapshot],
    features: list[AggregateFeatureSnapshot],
) -> ConfigSnapshot:
    return ConfigSnapshot(
        project_id=project_id, version=version, pipelines=pipelines, features=features
    )


def message(project_id: str, raw: RawEvent, version: int, n: int) -> EventMessage:
    return EventMessage(
        project_id=project_id,
        pipeline_id=raw.pipeline_id,
        event=raw.event,
        user_id=raw.user_id,
        event_id=f"evt-{n}",
        event_time_ms=raw.t_ms,
        received_at_ms=raw.t_ms,
        version=version,
        properties=raw.properties,
    )


def _distinct(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True)


def oracle_value(
    f: AggregateFeatureSnapshot, window: str, events: list[RawEvent], now_ms: int
) -> Any:
    """The value of feature `f` over `window` at `now_ms`, from the raw events (in
    production order) of one user."""
    start, end = parse_window(window).span_ms(now_ms)
    mine = [
        e
        for e in events
        if e.pipeline_id == f.pipeline_id and e.event == f.source_event and start <= e.t_ms < end
    ]
    values = [e.properties.get(f.field) if f.field else None for e in mine]
    numbers = [float(v) for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    present = [
        (e.t_ms, i, v) for i, (e, v) in enumerate(zip(mine, values, strict=True)) if v is not None
    ]
    match f.aggregation:
        case "COUNT":
            return len(mine)
        case "SUM":
            return math.fsum(numbers)
        case "AVG":
            return math.fsum(numbers) / len(numbers) if numbers else None
        case "MIN":
            return min(numbers) if numbers else None
        case "MAX":
            return max(numbers) if numbers else None
        case "COUNT_DISTINCT":
            return len({_distinct(v) for _, _, v in present})
        case "LAST":
            return max(present)[2] if present else None
        case "FIRST":
            return min(present, key=lambda p: (p[0], p[1]))[2] if present else None
    raise AssertionError(f.aggregation)


def oracle_values(
    features: list[AggregateFeatureSnapshot], events: list[RawEvent], now_ms: int
) -> dict[str, Any]:
    """{"<feature>_<window>": value} for every window of every feature."""
    return {
        f"{f.name}_{parse_window(w).label}": oracle_value(f, w, events, now_ms)
        for f in features
        for w in f.time_windows
    }


def assert_same_values(got: dict[str, Any], want: dict[str, Any]) -> None:
    """Equal keys; equal values, floats up to summation-order rounding."""
    assert sorted(got) == sorted(want)
    for key, expected in want.items():
        actual = got[key]
        if isinstance(expected, float) and isinstance(actual, float):
            assert math.isclose(actual, expected, rel_tol=1e-9, abs_tol=1e-9), key
        else:
            assert actual == expected, (key, actual, expected)
