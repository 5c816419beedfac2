"""The serving merge equals compute's reference `record.serve`, for any record and time."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from app.tiles.aggregations import Aggregation
from app.tiles.features import FeatureSpec
from app.tiles.merge import Merger
from app.tiles.record import AppliedEvent, apply_batch, serve
from app.tiles.windows import parse_window

AGGREGATIONS = [a.value for a in Aggregation]
WINDOWS = ["1m", "5m", "1h", "24h", "7d"]
EVENTS = ["view", "cart"]
NOW = 1_746_100_800_000
DAY = 86_400_000

values = st.one_of(
    st.integers(-1000, 1000),
    st.floats(-1e6, 1e6, allow_nan=False),
    st.sampled_from(["sku-1", "sku-2", "sku-3"]),
    st.sampled_from([0.0, -0.0, 0]),  # MIN/MAX ties the tile order decides
    st.none(),
)


def same(got: dict[str, Any], want: dict[str, Any]) -> None:
    # Equal, and equal as JSON text: same key order, -0.0 vs 0.0 and 1 vs 1.0 told apart.
    assert got == want
    assert json.dumps(got) == json.dumps(want)


@st.composite
def specs(draw: st.DrawFn) -> list[FeatureSpec]:
    count = draw(st.integers(1, 4))
    out = []
    for n in range(count):
        aggregation = draw(st.sampled_from(AGGREGATIONS))
        labels = draw(st.lists(st.sampled_from(WINDOWS), min_size=1, max_size=3, unique=True))
        fieldless = aggregation in ("COUNT", "RECENCY")
        field = None if fieldless else draw(st.sampled_from(["a", "b"]))
        size = draw(st.integers(1, 4)) if aggregation in ("LAST_N", "TOP_K") else None
        windows = tuple(parse_window(w) for w in labels)
        out.append(FeatureSpec(f"f{n}", aggregation, field, windows, size=size))  # type: ignore[arg-type]
    return out


@st.composite
def events(draw: st.DrawFn) -> list[AppliedEvent]:
    raw = draw(
        st.lists(
            st.tuples(
                st.sampled_from(EVENTS),
                st.integers(-8 * DAY, 10 * 60_000),
                st.dictionaries(st.sampled_from(["a", "b"]), values, max_size=2),
            ),
            max_size=40,
        )
    )
    return [AppliedEvent(0, i, name, NOW + dt, props) for i, (name, dt, props) in enumerate(raw)]


def record_of(feature_specs: list[FeatureSpec], applied: list[AppliedEvent]) -> dict[str, Any]:
    by_event = {name: feature_specs for name in EVENTS}
    return apply_batch(None, by_event, applied, NOW).record


@settings(max_examples=300, deadline=None)
@given(specs(), events(), st.integers(0, 9 * DAY))
def test_merge_equals_serve_at_any_later_time(
    feature_specs: list[FeatureSpec], applied: list[AppliedEvent], later: int
) -> None:
    record = record_of(feature_specs, applied)
    now = NOW + later
    same(Merger(feature_specs, now).at(now)(record), serve(record, feature_specs, now))


@settings(max_examples=300, deadline=None)
@given(specs(), events(), st.data())
def test_merge_equals_serve_at_window_edges(
    feature_specs: list[FeatureSpec], applied: list[AppliedEvent], data: st.DataObject
) -> None:
    # Reads placed within a tile of the moment an event leaves a window: where an
    # off-by-one in the tile range would show.
    record = record_of(feature_specs, applied)
    if not applied:
        return
    event = data.draw(st.sampled_from(applied))
    window = data.draw(st.sampled_from([w for s in feature_specs for w in s.windows]))
    now = event.t_ms + window.window_ms + data.draw(st.integers(-window.tile_ms, window.tile_ms))
    now = max(now, NOW)
    same(Merger(feature_specs, now).at(now)(record), serve(record, feature_specs, now))


@settings(max_examples=200, deadline=None)
@given(specs(), events(), st.integers(0, 2 * DAY), st.floats(0, 1))
def test_a_merger_stays_right_for_every_time_it_covers(
    feature_specs: list[FeatureSpec], applied: list[AppliedEvent], later: int, where: float
) -> None:
    record = record_of(feature_specs, applied)
    merger = Merger(feature_specs, NOW + later)
    inside = merger.valid_from + int(where * (merger.valid_until - merger.valid_from - 1))
    assert merger.covers(inside)
    same(merger.at(inside)(record), serve(record, feature_specs, inside))
    assert not merger.covers(merger.valid_until)
    assert not merger.covers(merger.valid_from - 1)


def test_feature_stored_under_another_fingerprint_is_served_empty() -> None:
    window = (parse_window("1h"),)
    stored_as = FeatureSpec("spend", "SUM", "price", window)  # type: ignore[arg-type]
    read_as = FeatureSpec("spend", "SUM", "total", window)  # type: ignore[arg-type]
    event = AppliedEvent(0, 1, "cart", NOW - 1000, {"price": 3.0, "total": 9.0})
    record = apply_batch(None, {"cart": [stored_as]}, [event], NOW).record
    assert Merger([stored_as], NOW)(record) == {"spend_1h": 3.0}
    assert Merger([read_as], NOW)(record) == {"spend_1h": 0.0}


@settings(max_examples=200, deadline=None)
@given(specs(), events(), st.integers(0, 2 * DAY), st.data())
def test_tile_keys_written_in_another_form_are_read_as_serve_reads_them(
    feature_specs: list[FeatureSpec], applied: list[AppliedEvent], later: int, data: st.DataObject
) -> None:
    # Compute writes str(tile); any other spelling int() accepts still counts the same.
    record = record_of(feature_specs, applied)
    spell = st.sampled_from(["{}", "0{}", "+{}", " {}", "{}_0"])
    for entry in record["features"].values():
        for label, tiles in entry["w"].items():
            entry["w"][label] = {data.draw(spell).format(k): p for k, p in tiles.items()}
    now = NOW + later
    same(Merger(feature_specs, now).at(now)(record), serve(record, feature_specs, now))


def test_count_distinct_over_sketch_tiles_equals_serve() -> None:
    # Past 64 values a tile holds an HLL sketch; unions of sketches and lists.
    windows = tuple(parse_window(w) for w in ("5m", "1h", "24h"))
    spec = FeatureSpec("skus", "COUNT_DISTINCT", "a", windows)  # type: ignore[arg-type]
    applied = [
        AppliedEvent(0, i, "view", NOW - (i % 7) * 9 * 60_000 - i, {"a": f"sku-{i % 150}"})
        for i in range(600)
    ]
    record = record_of([spec], applied)
    assert any(isinstance(p, str) for p in record["features"]["skus"]["w"]["1h"].values())
    for later in (0, 60_000, 3_600_000):
        same(
            Merger([spec], NOW + later).at(NOW + later)(record), serve(record, [spec], NOW + later)
        )
