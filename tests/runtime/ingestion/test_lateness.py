"""Ingestion's `late` count agrees with compute: an event is late exactly when compute
would skip it as LATE for every enabled feature it feeds (a pure check, with hypothesis
over event times around every window's edge)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from app.schemas.deployment import AggregateFeatureSnapshot, ConfigSnapshot
from app.tiles.features import Timing, timing
from runtime.compute.specs import build_specs, event_key
from runtime.ingestion.lateness import compile_lateness
from tests.runtime.ingestion.helpers import config_snapshot, pipeline_id, pipeline_snapshot

PID = pipeline_id()
NOW_MS = 1_780_000_123_456
HOUR_MS = 3_600_000


def feature(
    name: str, event: str, windows: list[str], *, enabled: bool = True
) -> AggregateFeatureSnapshot:
    return AggregateFeatureSnapshot(
        id=pipeline_id(),
        name=name,
        pipeline_id=PID,
        source_event=event,
        aggregation="COUNT",
        field=None,
        time_windows=windows,
        enabled=enabled,
    )


def snapshot() -> ConfigSnapshot:
    base = config_snapshot("shop", [pipeline_snapshot(PID)])
    features = [
        feature("cart_adds", "add_to_cart", ["5m", "1h"]),
        feature("cart_adds_day", "add_to_cart", ["24h"]),
        feature("views_month", "page_view", ["30d"], enabled=False),
    ]
    return base.model_copy(update={"features": features})


LATENESS = compile_lateness(snapshot())
SPECS = build_specs(snapshot())


class TestLateEvents:
    def test_an_event_older_than_its_longest_window_is_late(self):
        assert LATENESS.is_late(PID, "add_to_cart", NOW_MS - 25 * HOUR_MS, NOW_MS)
        assert LATENESS.is_late(PID, "add_to_cart", 0, NOW_MS)  # 1970

    def test_an_event_inside_a_longer_window_is_not_late(self):
        assert not LATENESS.is_late(PID, "add_to_cart", NOW_MS - 2 * HOUR_MS, NOW_MS)

    def test_an_event_that_feeds_no_enabled_feature_is_never_late(self):
        assert not LATENESS.is_late(PID, "page_view", 0, NOW_MS)
        assert not LATENESS.is_late(pipeline_id(), "add_to_cart", 0, NOW_MS)

    @settings(max_examples=300, deadline=None)
    @given(age_ms=st.integers(min_value=0, max_value=25 * HOUR_MS))
    def test_late_exactly_when_compute_skips_it_for_every_feature(self, age_ms: int):
        t_ms = NOW_MS - age_ms
        specs = SPECS.by_event[event_key(PID, "add_to_cart")]
        compute_late = all(timing(s, t_ms, NOW_MS) is Timing.LATE for s in specs)
        assert LATENESS.is_late(PID, "add_to_cart", t_ms, NOW_MS) == compute_late

    @given(age_ms=st.sampled_from([24 * HOUR_MS + d for d in (-1, 0, 1, 1_440_000, 1_440_001)]))
    def test_late_agrees_with_compute_at_the_24h_edge(self, age_ms: int):
        t_ms = NOW_MS - age_ms
        [day] = [
            s for s in SPECS.by_event[event_key(PID, "add_to_cart")] if s.name == "cart_adds_day"
        ]
        assert LATENESS.is_late(PID, "add_to_cart", t_ms, NOW_MS) == (
            timing(day, t_ms, NOW_MS) is Timing.LATE
        )
