"""The per-user record: exactly-once effect, config changes, TTL and serving."""

from __future__ import annotations

import copy
import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.tiles.aggregations import Aggregation
from app.tiles.features import MAX_FUTURE_MS, FeatureSpec
from app.tiles.record import (
    AppliedEvent,
    UserRecord,
    apply_batch,
    empty_record,
    record_ttl_seconds,
    serve,
)
from app.tiles.windows import parse_window

NOW = 1_700_000_000_000
FIVE_MIN, HOUR, DAY = parse_window("5m"), parse_window("1h"), parse_window("24h")

VIEWS = FeatureSpec("views", Aggregation.COUNT, None, (FIVE_MIN, HOUR))
SPEND = FeatureSpec("spend", Aggregation.SUM, "price", (HOUR, DAY))
SKUS = FeatureSpec("skus", Aggregation.COUNT_DISTINCT, "sku", (DAY,))
LAST_SKU = FeatureSpec("last_sku", Aggregation.LAST, "sku", (DAY,))
SPECS: dict[str, list[FeatureSpec]] = {
    "view": [VIEWS, SKUS, LAST_SKU],
    "purchase": [SPEND, SKUS],
}
ALL_SPECS = [VIEWS, SPEND, SKUS, LAST_SKU]


def event(
    offset: int, name: str = "view", t_ms: int = NOW, partition: int = 0, **properties: Any
) -> AppliedEvent:
    return AppliedEvent(partition, offset, name, t_ms, properties)


@st.composite
def batches(draw: st.DrawFn) -> list[AppliedEvent]:
    """A log slice as Kafka delivers it: per partition, offsets strictly increasing."""
    next_offset = {0: draw(st.integers(0, 5)), 1: draw(st.integers(0, 5))}
    events = []
    for _ in range(draw(st.integers(0, 25))):
        partition = draw(st.sampled_from([0, 1]))
        next_offset[partition] += draw(st.integers(1, 3))
        properties = draw(
            st.fixed_dictionaries(
                {},
                optional={
                    "price": st.one_of(st.integers(0, 100), st.floats(0, 100), st.none()),
                    "sku": st.sampled_from(["a", "b", "c", 7, None]),
                },
            )
        )
        events.append(
            AppliedEvent(
                partition,
                next_offset[partition],
                draw(st.sampled_from(["view", "purchase", "unconfigured"])),
                NOW - draw(st.integers(-MAX_FUTURE_MS - 60_000, 2 * DAY.window_ms)),
                properties,
            )
        )
    return events


PROPERTY = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class TestExactlyOnce:
    @PROPERTY
    @given(batches(), st.integers(0, 10**6))
    def test_replaying_a_batch_gives_the_identical_record(
        self, events: list[AppliedEvent], later: int
    ) -> None:
        once = apply_batch(None, SPECS, events, NOW).record
        replay = apply_batch(once, SPECS, events, NOW)
        assert replay.record == once
        assert replay.skipped_duplicate == len(events)
        # Later, replaying still adds nothing: reads are those of the first record.
        again = apply_batch(once, SPECS, events, NOW + later).record
        assert serve(again, ALL_SPECS, NOW + later) == serve(once, ALL_SPECS, NOW + later)

    @PROPERTY
    @given(batches(), st.data())
    def test_overlapping_redelivery_equals_one_clean_pass(
        self, events: list[AppliedEvent], data: st.DataObject
    ) -> None:
        # Compute wrote the record for events[:cut], had committed offsets only up to
        # events[:resume] when it crashed, and Kafka redelivers events[resume:].
        cut = data.draw(st.integers(0, len(events)))
        resume = data.draw(st.integers(0, cut))
        first = apply_batch(None, SPECS, events[:cut], NOW).record
        redelivered = apply_batch(first, SPECS, events[resume:], NOW)
        clean = apply_batch(None, SPECS, events, NOW)
        assert redelivered.record == clean.record
        assert redelivered.skipped_duplicate == cut - resume

    @PROPERTY
    @given(batches())
    def test_every_event_is_counted_once_in_the_result(self, events: list[AppliedEvent]) -> None:
        result = apply_batch(None, SPECS, events + events[:3], NOW)
        total = result.applied + result.skipped_duplicate + result.late + result.future
        assert total == len(events) + len(events[:3])
        assert result.skipped_duplicate == len(events[:3])

    @PROPERTY
    @given(batches())
    def test_offsets_advance_to_the_highest_offset_per_partition(
        self, events: list[AppliedEvent]
    ) -> None:
        record = apply_batch(None, SPECS, events, NOW).record
        expected: dict[str, int] = {}
        for e in events:
            expected[str(e.partition)] = max(expected.get(str(e.partition), e.offset), e.offset)
        assert record["offsets"] == expected

    @PROPERTY
    @given(batches())
    def test_the_input_record_is_never_modified(self, events: list[AppliedEvent]) -> None:
        record = apply_batch(None, SPECS, events[: len(events) // 2], NOW).record
        before = copy.deepcopy(record)
        apply_batch(record, SPECS, events, NOW + 3_600_000)
        assert record == before

    def test_an_offset_at_or_below_the_stored_one_is_a_duplicate(self) -> None:
        record = apply_batch(None, SPECS, [event(10), event(3, partition=1)], NOW).record
        result = apply_batch(record, SPECS, [event(10), event(9), event(4, partition=1)], NOW)
        assert (result.applied, result.skipped_duplicate) == (1, 2)
        assert result.fresh == (2,)
        assert result.record["offsets"] == {"0": 10, "1": 4}
        assert serve(result.record, [VIEWS], NOW)["views_5m"] == 3

    def test_a_repeated_or_lower_offset_within_a_batch_is_a_duplicate(self) -> None:
        result = apply_batch(None, SPECS, [event(5), event(5), event(4), event(6)], NOW)
        assert (result.applied, result.skipped_duplicate) == (2, 2)
        assert result.fresh == (0, 3)
        assert serve(result.record, [VIEWS], NOW)["views_5m"] == 2


class TestLateAndFuture:
    def test_late_events_are_counted_and_still_consume_their_offset(self) -> None:
        old = NOW - DAY.window_ms - DAY.tile_ms - 1
        result = apply_batch(None, SPECS, [event(1, t_ms=old, sku="a")], NOW)
        assert (result.applied, result.late) == (0, 1)
        assert result.record == {
            "features": {},
            "offsets": {"0": 1},
            "ids": {},  # nothing applied to a feature: a later copy is late too
            "updated_ms": NOW,
            "last_event_ms": 0,
        }

    def test_an_event_late_for_one_feature_but_not_another_is_applied(self) -> None:
        two_hours_ago = NOW - 2 * HOUR.window_ms
        result = apply_batch(None, SPECS, [event(1, t_ms=two_hours_ago, sku="a")], NOW)
        assert (result.applied, result.late) == (1, 0)
        values = serve(result.record, ALL_SPECS, NOW)
        assert (values["views_1h"], values["skus_24h"], values["last_sku_24h"]) == (0, 1, "a")

    def test_events_too_far_ahead_are_counted_as_future(self) -> None:
        ahead = NOW + MAX_FUTURE_MS + 1
        result = apply_batch(None, SPECS, [event(1, t_ms=ahead), event(2, t_ms=NOW)], NOW)
        assert (result.applied, result.future) == (1, 1)

    def test_events_no_feature_uses_are_applied_and_consume_their_offset(self) -> None:
        result = apply_batch(None, SPECS, [event(7, name="unconfigured")], NOW)
        assert result.applied == 1
        assert result.record["offsets"] == {"0": 7}
        assert result.record["features"] == {}

    def test_a_window_empties_one_window_and_one_tile_after_the_last_event(self) -> None:
        record = apply_batch(None, SPECS, [event(1)], NOW).record
        assert serve(record, [VIEWS], NOW + FIVE_MIN.window_ms)["views_5m"] == 1
        gone = NOW + FIVE_MIN.window_ms + FIVE_MIN.tile_ms
        assert serve(record, [VIEWS], gone) == {"views_5m": 0, "views_1h": 1}
        # A later write prunes what can no longer be read.
        pruned = apply_batch(record, SPECS, [], gone).record
        assert set(pruned["features"]["views"]["w"]) == {"1h"}


class TestConfigChanges:
    def test_a_feature_whose_aggregation_or_field_changed_restarts_empty(self) -> None:
        record = apply_batch(None, SPECS, [event(1, name="purchase", price=10)], NOW).record
        by_total = FeatureSpec("spend", Aggregation.SUM, "total", (HOUR, DAY))
        # Served before compute rewrites the record: the stale tiles are not served.
        assert serve(record, [by_total], NOW)["spend_1h"] == 0.0
        changed = {"purchase": [by_total]}
        result = apply_batch(record, changed, [event(2, name="purchase", total=3)], NOW)
        assert serve(result.record, [by_total], NOW) == {"spend_1h": 3.0, "spend_24h": 3.0}
        assert result.record["features"]["spend"]["fp"] == by_total.fingerprint

    def test_features_no_longer_configured_are_dropped(self) -> None:
        record = apply_batch(None, SPECS, [event(1, sku="a")], NOW).record
        assert set(record["features"]) == {"views", "skus", "last_sku"}
        result = apply_batch(record, {"view": [VIEWS]}, [], NOW)
        assert set(result.record["features"]) == {"views"}

    def test_a_window_added_to_a_feature_starts_empty_and_the_others_keep_their_tiles(
        self,
    ) -> None:
        record = apply_batch(None, SPECS, [event(1)], NOW).record
        wider = FeatureSpec("views", Aggregation.COUNT, None, (FIVE_MIN, HOUR, DAY))
        result = apply_batch(record, {"view": [wider]}, [event(2)], NOW)
        assert serve(result.record, [wider], NOW) == {"views_5m": 2, "views_1h": 2, "views_24h": 1}

    def test_two_different_specs_under_one_name_are_refused(self) -> None:
        clash = {"view": [VIEWS], "purchase": [FeatureSpec("views", "SUM", "price", (HOUR,))]}  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="configured twice"):
            apply_batch(None, clash, [], NOW)


class TestSerialisation:
    @PROPERTY
    @given(batches(), batches())
    def test_a_json_round_trip_is_lossless_and_applying_on_it_gives_the_same_record(
        self, first: list[AppliedEvent], second: list[AppliedEvent]
    ) -> None:
        record = apply_batch(None, SPECS, first, NOW).record
        loaded: UserRecord = json.loads(json.dumps(record))
        assert loaded == record
        later = NOW + 60_000
        assert apply_batch(loaded, SPECS, second, later) == apply_batch(
            record, SPECS, second, later
        )

    def test_a_sketch_partial_survives_json(self) -> None:
        events = [event(i, sku=f"sku-{i}") for i in range(1, 200)]
        record = apply_batch(None, SPECS, events, NOW).record
        loaded = json.loads(json.dumps(record))
        assert isinstance(next(iter(loaded["features"]["skus"]["w"]["24h"].values())), str)
        assert math.isclose(serve(loaded, [SKUS], NOW)["skus_24h"], 199, rel_tol=0.05)


class TestServe:
    def test_no_record_serves_every_configured_key_at_its_empty_value(self) -> None:
        assert serve(None, ALL_SPECS, NOW) == {
            "views_5m": 0,
            "views_1h": 0,
            "spend_1h": 0.0,
            "spend_24h": 0.0,
            "skus_24h": 0,
            "last_sku_24h": None,
        }

    def test_serves_every_feature_and_window_from_the_record(self) -> None:
        events = [
            event(1, sku="a"),
            event(2, name="purchase", t_ms=NOW - 2 * HOUR.window_ms, price=5, sku="b"),
            event(3, name="purchase", price=2.5, sku="a"),
            event(4, t_ms=NOW + 1, sku="c"),
        ]
        record = apply_batch(empty_record(), SPECS, events, NOW).record
        assert serve(record, ALL_SPECS, NOW) == {
            "views_5m": 2,
            "views_1h": 2,
            "spend_1h": 2.5,
            "spend_24h": 7.5,
            "skus_24h": 3,
            "last_sku_24h": "c",
        }


class TestTtl:
    def test_is_the_longest_window_plus_its_tile_plus_the_future_tolerance(self) -> None:
        assert record_ttl_seconds(ALL_SPECS) == 86_400 + 1_440 + MAX_FUTURE_MS // 1000
        thirty = FeatureSpec("x", Aggregation.COUNT, None, (parse_window("30d"), FIVE_MIN))
        assert record_ttl_seconds([VIEWS, thirty]) == 2_592_000 + 43_200 + 300

    @PROPERTY
    @given(batches(), st.integers(0, 10**7))
    def test_a_record_expired_by_its_ttl_had_nothing_left_to_serve(
        self, events: list[AppliedEvent], extra_ms: int
    ) -> None:
        record = apply_batch(None, SPECS, events, NOW).record
        expired = NOW + record_ttl_seconds(ALL_SPECS) * 1000 + extra_ms
        assert serve(record, ALL_SPECS, expired) == serve(None, ALL_SPECS, expired)

    def test_no_feature_has_no_ttl(self) -> None:
        with pytest.raises(ValueError, match="no feature configured"):
            record_ttl_seconds([])
