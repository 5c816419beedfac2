"""Tiled windowed aggregation, checked against a brute-force oracle over raw events."""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.tiles.aggregations import Aggregation, as_number, distinct_key
from app.tiles.features import (
    MAX_FUTURE_MS,
    FeatureSpec,
    FeatureState,
    Timing,
    apply_value,
    prune,
    read,
    read_all,
)
from app.tiles.windows import MAX_WINDOW_SECONDS, Window, parse_window

BASE_MS = 1_700_000_000_000
LABELS = ["1m", "5m", "7m", "1h", "3h", "24h", "7d", "30d", "90d"]
UNIT_SECONDS = {"m": 60, "h": 3_600, "d": 86_400}
VALUES = st.one_of(
    st.none(),
    st.integers(-1_000, 1_000),
    st.floats(-1e6, 1e6, allow_nan=False),
    st.text("abc", max_size=2),
    st.sampled_from([True, False, math.nan, math.inf, -math.inf, 10**400, 2.0, "2", [1], {"k": 1}]),
)
SLOW = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def labels(draw: st.DrawFn) -> str:
    """A documented window, or any other valid one ("13m", "41h", "2d", ...)."""
    if draw(st.booleans()):
        return draw(st.sampled_from(LABELS))
    unit = draw(st.sampled_from("mhd"))
    return f"{draw(st.integers(1, MAX_WINDOW_SECONDS // UNIT_SECONDS[unit]))}{unit}"


WINDOW_SETS = st.lists(labels(), min_size=1, max_size=3, unique=True).map(
    lambda ls: tuple(parse_window(label) for label in ls)
)


# N of LAST_N, K of TOP_K in these tests: small, so steps of up to 8 events truncate.
SIZE = 3


def spec_for(aggregation: Aggregation, windows: tuple[Window, ...]) -> FeatureSpec:
    field = None if aggregation in (Aggregation.COUNT, Aggregation.RECENCY) else "x"
    size = SIZE if aggregation in (Aggregation.LAST_N, Aggregation.TOP_K) else None
    return FeatureSpec("f", aggregation, field, windows, size=size)


# --- the oracle: no tiles, just the raw events and the definition -------------------


@dataclass(frozen=True)
class Raw:
    t_ms: int
    value: Any
    order: int  # apply order: breaks LAST/FIRST ties
    applied_at: int  # the `now` the event was applied at


def oracle_number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return float(value) if math.isfinite(value) else None
    except OverflowError:
        return None


def oracle_key(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return json.dumps(value, sort_keys=True)


def oracle(aggregation: Aggregation, raws: list[Raw], window: Window, now_ms: int) -> Any:
    """The aggregation over every event whose time lies in the tile-aligned span
    [lo*s, (hi+1)*s) at now_ms, computed from scratch."""
    s = window.seconds * 1000 // 60
    start = (now_ms - window.seconds * 1000) // s * s
    end = (now_ms // s + 1) * s
    # Events refused as too far in the future at apply time never count.
    events = [r for r in raws if start <= r.t_ms < end and r.t_ms <= r.applied_at + MAX_FUTURE_MS]
    numbers = [n for n in (oracle_number(r.value) for r in events) if n is not None]
    present = [r for r in events if r.value is not None]
    match aggregation:
        case Aggregation.COUNT:
            return len(events)
        case Aggregation.SUM:
            return math.fsum(numbers)
        case Aggregation.AVG:
            return math.fsum(numbers) / len(numbers) if numbers else None
        case Aggregation.MIN:
            return min(numbers) if numbers else None
        case Aggregation.MAX:
            return max(numbers) if numbers else None
        case Aggregation.COUNT_DISTINCT:
            return len({oracle_key(r.value) for r in present})
        case Aggregation.LAST:
            return max(present, key=lambda r: (r.t_ms, r.order)).value if present else None
        case Aggregation.FIRST:
            return min(present, key=lambda r: (r.t_ms, r.order)).value if present else None
        case Aggregation.LAST_N:
            newest: dict[str | None, Raw] = {}
            for r in present:
                key = oracle_key(r.value)
                if key not in newest or (r.t_ms, r.order) > (newest[key].t_ms, newest[key].order):
                    newest[key] = r
            ranked = sorted(newest.values(), key=lambda r: (r.t_ms, r.order), reverse=True)
            return [r.value for r in ranked[:SIZE]]
        case Aggregation.TOP_K:
            counts: dict[str, int] = {}
            for r in present:
                k = oracle_key(r.value)
                assert k is not None
                counts[k] = counts.get(k, 0) + 1
            ranked_counts = sorted(counts.items(), key=lambda kc: (-kc[1], kc[0]))
            return [{"value": k, "count": c} for k, c in ranked_counts[:SIZE]]
        case Aggregation.RECENCY:
            latest = max((r.t_ms for r in events), default=None)
            return None if latest is None else max(now_ms - latest, 0) / 1000
    raise AssertionError(aggregation)


def assert_matches(aggregation: Aggregation, got: Any, want: Any, raws: list[Raw]) -> None:
    if aggregation in (Aggregation.COUNT, Aggregation.COUNT_DISTINCT):
        assert type(got) is int
        assert got == want
    elif aggregation in (Aggregation.SUM, Aggregation.AVG) and want is not None:
        assert type(got) is float
        # Tiles add in apply order, the oracle with fsum: allow rounding, nothing more.
        scale = max((abs(n) for n in map(oracle_number, [r.value for r in raws]) if n), default=1)
        assert math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-9 * scale * len(raws))
    elif aggregation in (Aggregation.MIN, Aggregation.MAX) and want is not None:
        assert type(got) is float
        assert got == want
    else:
        # json.dumps tells 1 from 1.0 and True, and makes NaN equal to NaN.
        assert json.dumps(got) == json.dumps(want)


@dataclass(frozen=True)
class Step:
    now_ms: int
    events: list[tuple[int, Any]]
    prune: bool
    json_round_trip: bool
    queries: list[int]  # ms after now_ms


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Aggregation, tuple[Window, ...], list[Step]]:
    aggregation = draw(st.sampled_from(Aggregation))
    windows = draw(WINDOW_SETS)
    scale = draw(st.sampled_from(windows)).seconds * 1000
    # Shared event times, so several events (in and across steps) have the same t.
    pool = draw(st.lists(st.integers(BASE_MS - 2 * scale, BASE_MS + scale), min_size=1))
    now = BASE_MS + draw(st.integers(0, scale))
    steps = []
    for _ in range(draw(st.integers(1, 5))):
        now += draw(st.one_of(st.just(0), st.integers(0, scale)))
        # Near some window's old edge at this step's now: the tiles prune and reads
        # treat differently.
        edges = [now - w.window_ms for w in windows]
        edge = st.one_of(
            *(
                st.integers(e - 2 * w.tile_ms, e + 2 * w.tile_ms)
                for e, w in zip(edges, windows, strict=True)
            )
        )
        times = st.one_of(
            st.integers(now - 2 * scale, now),
            edge,
            st.integers(now, now + MAX_FUTURE_MS + 2 * 60_000),
            st.sampled_from(pool),
        )
        events = draw(st.lists(st.tuples(times, VALUES), max_size=8))
        queries = draw(st.lists(st.integers(0, 2 * scale + MAX_FUTURE_MS), max_size=3))
        steps.append(Step(now, events, draw(st.booleans()), draw(st.booleans()), [0, *queries]))
    return aggregation, windows, steps


class TestAgainstOracle:
    @settings(SLOW, max_examples=400)
    @given(scenarios())
    def test_read_equals_brute_force_over_the_tile_aligned_span(
        self, scenario: tuple[Aggregation, tuple[Window, ...], list[Step]]
    ) -> None:
        aggregation, windows, steps = scenario
        spec = spec_for(aggregation, windows)
        state: FeatureState = {}
        raws: list[Raw] = []
        for step in steps:
            for t_ms, value in step.events:
                apply_value(state, spec, t_ms, value, step.now_ms)
                raws.append(Raw(t_ms, value, len(raws), step.now_ms))
            if step.prune:
                prune(state, spec, step.now_ms)
            if step.json_round_trip:
                state = json.loads(json.dumps(state))
            for query in step.queries:
                now = step.now_ms + query
                for window in windows:
                    want = oracle(aggregation, raws, window, now)
                    assert_matches(aggregation, read(state, spec, window, now), want, raws)

    @settings(SLOW, max_examples=10)
    @given(st.integers(0, 10**6), st.sampled_from(["5m", "1h"]))
    def test_count_distinct_is_exact_while_every_tile_holds_at_most_64_values(
        self, seed: int, label: str
    ) -> None:
        window = parse_window(label)
        spec = spec_for(Aggregation.COUNT_DISTINCT, (window,))
        rng = random.Random(seed)
        now = BASE_MS + rng.randrange(window.window_ms)
        state: FeatureState = {}
        raws: list[Raw] = []
        # 60 tiles x up to 60 values each: the window's union is far above 64.
        for tile in range(window.tile_range(now)[0] + 1, window.tile_of(now) + 1):
            for _ in range(rng.randrange(61)):
                t = tile * window.tile_ms + rng.randrange(window.tile_ms)
                value = rng.choice([rng.randrange(10**6), f"sku-{rng.randrange(10**6)}"])
                apply_value(state, spec, min(t, now), value, now)
                raws.append(Raw(min(t, now), value, len(raws), now))
        got = read(state, spec, window, now)
        assert got == oracle(Aggregation.COUNT_DISTINCT, raws, window, now)
        assert got > 64

    # The sketch's relative standard error is ~2.3% (sketch.py): a 5% bound is only 2.2
    # of them, which random seeds broke now and then (seed 85, n 2295: 5.2%). Three
    # standard errors (7%), on examples fixed by derandomize, fail only for a real bug.
    @settings(SLOW, max_examples=10, derandomize=True)
    @given(st.integers(0, 10**6), st.integers(200, 3_000))
    def test_count_distinct_estimates_within_three_standard_errors_once_a_tile_is_a_sketch(
        self, seed: int, n: int
    ) -> None:
        window = parse_window("1h")
        spec = spec_for(Aggregation.COUNT_DISTINCT, (window,))
        rng = random.Random(seed)
        now = BASE_MS
        state: FeatureState = {}
        raws: list[Raw] = []
        current_tile_start = window.tile_of(now) * window.tile_ms
        for i in range(n):
            # Half the events in the current tile, so that tile exceeds 64 values.
            t = rng.randrange(current_tile_start if i % 2 else now - window.window_ms, now + 1)
            value = f"product-{rng.randrange(10 * n)}"
            apply_value(state, spec, t, value, now)
            raws.append(Raw(t, value, i, now))
        assert any(isinstance(p, str) for p in state["1h"].values())
        want = oracle(Aggregation.COUNT_DISTINCT, raws, window, now)
        assert abs(read(state, spec, window, now) - want) <= 3 * 0.023 * want


class TestWindowEdges:
    @settings(max_examples=200)
    @given(
        labels(),
        st.integers(0, 10**7),
        st.lists(st.integers(-(10**4), 10**4), max_size=40),
        st.lists(st.floats(0, 1), max_size=40),
    )
    def test_differs_from_the_exact_window_only_by_events_in_the_edge_tiles(
        self, label: str, jitter: int, extra: list[int], fractions: list[float]
    ) -> None:
        window = parse_window(label)
        spec = spec_for(Aggregation.COUNT, (window,))
        now = BASE_MS + jitter
        w_ms = window.window_ms
        # Events over (now - W - 2 tiles, now + 1 tile), and some right at the edges.
        span = w_ms + 3 * window.tile_ms
        times = [now - w_ms - 2 * window.tile_ms + int(f * span) for f in fractions]
        times += [now - w_ms + d for d in extra] + [now + d for d in extra]
        # Events further ahead are refused (see TestTiming); the rest of the tile counts.
        times = [t for t in times if t <= now + MAX_FUTURE_MS]
        state: FeatureState = {}
        for t in times:
            apply_value(state, spec, t, None, now)
        exact = sum(now - w_ms < t <= now for t in times)
        start, end = window.span_ms(now)
        old_edge = [t for t in times if start <= t <= now - w_ms]
        new_edge = [t for t in times if now < t < end]
        assert read(state, spec, window, now) == exact + len(old_edge) + len(new_edge)
        # The extra old events all sit in the first tile read: at most 1/60 of W.
        assert all(window.tile_of(t) == window.tile_range(now)[0] for t in old_edge)
        assert all(window.tile_of(t) == window.tile_of(now) for t in new_edge)

    @settings(max_examples=200)
    @given(labels(), st.integers(0, 10**10), st.integers(0, 10**10))
    def test_an_event_counts_for_w_and_drops_to_zero_within_w_plus_one_tile(
        self, label: str, t_offset: int, later: int
    ) -> None:
        window = parse_window(label)
        spec = spec_for(Aggregation.COUNT, (window,))
        t = BASE_MS + t_offset
        state: FeatureState = {}
        apply_value(state, spec, t, None, t)
        assert read(state, spec, window, t + later % (window.window_ms + 1)) == 1
        assert read(state, spec, window, t + window.window_ms + window.tile_ms + later) == 0
        # Pruning at those times agrees: nothing readable is dropped, the rest is.
        prune(state, spec, t + window.window_ms)
        assert read(state, spec, window, t + window.window_ms) == 1
        prune(state, spec, t + window.window_ms + window.tile_ms)
        assert state == {}


class TestBoundedMemory:
    """Proves: after each pruned batch a window holds at most 61 tiles up to now
    (the 61 a query reads), plus at most ceil(MAX_FUTURE_MS / tile) tiles of events
    stamped ahead of now; so at most 61 when no event is in the future."""

    @pytest.mark.parametrize(
        ("aggregation", "future"),
        [
            (Aggregation.COUNT, False),
            (Aggregation.AVG, True),
            (Aggregation.COUNT_DISTINCT, False),
            (Aggregation.LAST, True),
        ],
    )
    def test_10000_events_never_hold_more_than_61_tiles_per_window_up_to_now(
        self, aggregation: Aggregation, future: bool
    ) -> None:
        windows = tuple(parse_window(label) for label in ("1m", "5m", "1h", "24h", "30d"))
        spec = spec_for(aggregation, windows)
        rng = random.Random(7)
        state: FeatureState = {}
        now = BASE_MS
        peak = dict.fromkeys((w.label for w in windows), 0)
        for batch in range(500):
            # Bursts and gaps: ms apart within a burst, up to days between bursts.
            now += int(rng.choice([0, 100, 1_000, 60_000, 3_600_000, 86_400_000 * rng.random()]))
            for _ in range(20):
                scale = rng.choice(windows).window_ms
                ahead = rng.randrange(MAX_FUTURE_MS + 1) if future and rng.random() < 0.2 else 0
                t = now - rng.randrange(3 * scale) + ahead
                apply_value(state, spec, t, rng.randrange(10**6), now)
            prune(state, spec, now)
            for window in windows:
                tiles = [int(k) for k in state.get(window.label, {})]
                hi = window.tile_of(now)
                assert sum(i <= hi for i in tiles) <= 61, (batch, window.label)
                assert len(tiles) <= 61 + math.ceil(MAX_FUTURE_MS / window.tile_ms)
                peak[window.label] = max(peak[window.label], len(tiles))
        # The bound is reached, so the test did exercise it.
        assert peak["30d"] == 61


class TestTiming:
    @settings(max_examples=300)
    @given(WINDOW_SETS, st.integers(-(10**11), 10**9))
    def test_late_means_outside_every_window_now_and_later(
        self, windows: tuple[Window, ...], offset: int
    ) -> None:
        spec = spec_for(Aggregation.COUNT, windows)
        now = BASE_MS
        t = now + offset
        state: FeatureState = {}
        verdict = apply_value(state, spec, t, None, now)
        longest = spec.longest
        assert (verdict is Timing.FUTURE) == (t > now + MAX_FUTURE_MS)
        if verdict is Timing.LATE:
            assert state == {}
            assert all(t <= now - w.window_ms for w in windows)
        if t < now - longest.window_ms - longest.tile_ms:
            assert verdict is Timing.LATE
        if verdict is Timing.ON_TIME:
            assert state != {}

    def test_an_event_older_than_the_short_window_still_counts_in_the_long_one(self) -> None:
        spec = spec_for(Aggregation.COUNT, (parse_window("1h"), parse_window("24h")))
        state: FeatureState = {}
        now = BASE_MS
        assert apply_value(state, spec, now - 2 * 3_600_000, None, now) is Timing.ON_TIME
        assert read_all(state, spec, now) == {"f_1h": 0, "f_24h": 1}
        assert list(state) == ["24h"]

    def test_too_old_and_too_far_ahead_events_are_refused_and_change_nothing(self) -> None:
        window = parse_window("1h")
        spec = spec_for(Aggregation.SUM, (parse_window("5m"), window))
        state: FeatureState = {}
        now = BASE_MS
        too_old = now - window.window_ms - window.tile_ms - 1
        assert apply_value(state, spec, too_old, 1, now) is Timing.LATE
        assert apply_value(state, spec, now + MAX_FUTURE_MS + 1, 1, now) is Timing.FUTURE
        assert state == {}
        assert apply_value(state, spec, now + MAX_FUTURE_MS, 1, now) is Timing.ON_TIME
        assert read(state, spec, window, now + MAX_FUTURE_MS) == 1.0

    def test_a_skipped_value_is_on_time_but_adds_nothing(self) -> None:
        spec = spec_for(Aggregation.SUM, (parse_window("5m"),))
        state: FeatureState = {}
        for value in (None, "12", True, math.nan):
            assert apply_value(state, spec, BASE_MS, value, BASE_MS) is Timing.ON_TIME
        assert state == {}


class TestPartials:
    @pytest.mark.parametrize(
        ("aggregation", "winner"), [(Aggregation.LAST, "second"), (Aggregation.FIRST, "first")]
    )
    def test_equal_times_resolve_by_apply_order(
        self, aggregation: Aggregation, winner: str
    ) -> None:
        spec = spec_for(aggregation, (parse_window("5m"),))
        state: FeatureState = {}
        for value in ("first", "second"):
            apply_value(state, spec, BASE_MS, value, BASE_MS)
        assert read(state, spec, spec.windows[0], BASE_MS) == winner

    @pytest.mark.parametrize(
        ("aggregation", "empty"),
        [
            (Aggregation.COUNT, 0),
            (Aggregation.SUM, 0.0),
            (Aggregation.COUNT_DISTINCT, 0),
            (Aggregation.AVG, None),
            (Aggregation.MIN, None),
            (Aggregation.MAX, None),
            (Aggregation.LAST, None),
            (Aggregation.FIRST, None),
        ],
    )
    def test_an_empty_window_serves_zero_or_none(
        self, aggregation: Aggregation, empty: Any
    ) -> None:
        spec = spec_for(aggregation, (parse_window("5m"), parse_window("1h")))
        assert read_all({}, spec, BASE_MS) == {"f_5m": empty, "f_1h": empty}

    def test_partials_have_the_documented_json_shapes(self) -> None:
        window = parse_window("1h")
        shapes = {
            Aggregation.COUNT: 2,
            Aggregation.SUM: 5.0,
            Aggregation.AVG: [5.0, 2],
            Aggregation.MIN: 2.0,
            Aggregation.MAX: 3.0,
            Aggregation.LAST: [BASE_MS + 1, 3],
            Aggregation.FIRST: [BASE_MS, 2],
            Aggregation.COUNT_DISTINCT: ["2", "3"],
        }
        for aggregation, partial in shapes.items():
            spec = spec_for(aggregation, (window,))
            state: FeatureState = {}
            apply_value(state, spec, BASE_MS, 2, BASE_MS + 1)
            apply_value(state, spec, BASE_MS + 1, 3, BASE_MS + 1)
            assert state == {"1h": {str(window.tile_of(BASE_MS)): partial}}, aggregation

    def test_prune_drops_windows_the_spec_no_longer_has(self) -> None:
        old = spec_for(Aggregation.COUNT, (parse_window("5m"), parse_window("1h")))
        state: FeatureState = {}
        apply_value(state, old, BASE_MS, None, BASE_MS)
        prune(state, spec_for(Aggregation.COUNT, (parse_window("1h"),)), BASE_MS)
        assert list(state) == ["1h"]


class TestFeatureSpec:
    def test_fingerprint_is_aggregation_and_field_not_windows(self) -> None:
        five, hour = parse_window("5m"), parse_window("1h")
        base = FeatureSpec("f", Aggregation.SUM, "price", (five,))
        assert base.fingerprint == FeatureSpec("g", Aggregation.SUM, "price", (hour,)).fingerprint
        assert base.fingerprint != FeatureSpec("f", Aggregation.AVG, "price", (five,)).fingerprint
        assert base.fingerprint != FeatureSpec("f", Aggregation.SUM, "total", (five,)).fingerprint
        count = FeatureSpec("f", Aggregation.COUNT, None, (five,))
        assert count.fingerprint == FeatureSpec("f", Aggregation.COUNT, "x", (five,)).fingerprint

    def test_accepts_the_schema_aggregation_strings(self) -> None:
        spec = FeatureSpec("f", "COUNT_DISTINCT", "sku", (parse_window("1h"),))  # type: ignore[arg-type]
        assert spec.aggregation is Aggregation.COUNT_DISTINCT

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"name": ""}, "name must not be empty"),
            ({"windows": ()}, "has no window"),
            ({"windows": (parse_window("5m"), parse_window("05m"))}, "repeats a window"),
            ({"field": None}, "SUM needs a field"),
            ({"aggregation": "MEDIAN"}, "MEDIAN"),
        ],
    )
    def test_rejects_an_unusable_spec(self, kwargs: dict[str, Any], message: str) -> None:
        args: dict[str, Any] = {
            "name": "f",
            "aggregation": Aggregation.SUM,
            "field": "price",
            "windows": (parse_window("5m"),),
        }
        with pytest.raises(ValueError, match=message):
            FeatureSpec(**(args | kwargs))


class TestValueRules:
    @pytest.mark.parametrize(
        ("value", "number"),
        [
            (3, 3.0),
            (2.5, 2.5),
            (-0.0, 0.0),
            (True, None),
            ("3", None),
            (None, None),
            (math.nan, None),
            (math.inf, None),
            (10**400, None),
            ([1], None),
        ],
    )
    def test_numbers_are_finite_ints_and_floats_but_not_bools(
        self, value: Any, number: Any
    ) -> None:
        assert as_number(value) == number

    @pytest.mark.parametrize(
        ("value", "key"),
        [
            ("a", "a"),
            (1, "1"),
            (1.0, "1"),
            (1.5, "1.5"),
            (True, "true"),
            (None, None),
            ({"b": 1, "a": 2}, '{"a": 2, "b": 1}'),
            ([1, "x"], '[1, "x"]'),
        ],
    )
    def test_distinct_values_are_canonical_strings(self, value: Any, key: Any) -> None:
        assert distinct_key(value) == key
