"""The serving plan: the empty answer and feature selections (pure)."""

from __future__ import annotations

import pytest

from app.tiles.derived import derived_spec
from app.tiles.features import FeatureSpec
from app.tiles.record import AppliedEvent, apply_batch, serve
from app.tiles.windows import parse_window
from runtime.serving.plan import MAX_CACHED_SELECTIONS, ServingPlan, UnknownFeatureKeys


def spec(name: str, aggregation: str, field: str | None, *windows: str) -> FeatureSpec:
    return FeatureSpec(name, aggregation, field, tuple(parse_window(w) for w in windows))  # type: ignore[arg-type]


SPECS = (
    spec("cart_adds", "COUNT", None, "5m", "1h"),
    spec("spend", "SUM", "price", "1h", "24h"),
    spec("avg_price", "AVG", "price", "1h"),
    spec("last_sku", "LAST", "sku", "24h"),
)


class TestEmptyAnswer:
    def test_every_key_of_every_window_is_present_at_its_empty_value(self) -> None:
        plan = ServingPlan.build("p", 3, SPECS)
        assert plan.all.empty == {
            "cart_adds_5m": 0,
            "cart_adds_1h": 0,
            "spend_1h": 0.0,
            "spend_24h": 0.0,
            "avg_price_1h": None,
            "last_sku_24h": None,
        }

    def test_empty_answer_equals_what_serve_gives_for_no_record(self) -> None:
        plan = ServingPlan.build("p", 3, SPECS)
        assert plan.all.empty == serve(None, SPECS, 1_000_000)

    def test_two_features_serving_one_key_are_refused(self) -> None:
        clash = (spec("x", "COUNT", None, "5m"), spec("x", "SUM", "v", "5m"))
        with pytest.raises(ValueError, match="x_5m"):
            ServingPlan.build("p", 1, clash)


class TestSelection:
    def test_selection_serves_exactly_the_selected_keys(self) -> None:
        plan = ServingPlan.build("p", 1, SPECS)
        selection = plan.select(["spend_24h", "cart_adds_5m"])
        assert set(selection.empty) == {"spend_24h", "cart_adds_5m"}
        now = 10_000_000
        event = AppliedEvent(0, 1, "add", now - 1000, {"price": 2.5})
        record = apply_batch(None, {"add": SPECS}, [event], now).record
        assert serve(record, selection.specs, now) == {"cart_adds_5m": 1, "spend_24h": 2.5}

    def test_no_selection_is_every_feature(self) -> None:
        plan = ServingPlan.build("p", 1, SPECS)
        assert plan.select(None) is plan.all

    def test_duplicate_keys_are_served_once(self) -> None:
        plan = ServingPlan.build("p", 1, SPECS)
        assert plan.select(["spend_1h", "spend_1h"]).keys == ["spend_1h"]

    def test_unknown_keys_are_all_listed(self) -> None:
        plan = ServingPlan.build("p", 1, SPECS)
        with pytest.raises(UnknownFeatureKeys) as caught:
            plan.select(["spend_1h", "nope_5m", "cart_adds_7d"])
        assert caught.value.keys == ["nope_5m", "cart_adds_7d"]

    def test_selection_keeps_the_fingerprint_so_it_reads_the_stored_tiles(self) -> None:
        plan = ServingPlan.build("p", 1, SPECS)
        (sub,) = plan.select(["spend_1h"]).specs
        assert sub.fingerprint == SPECS[1].fingerprint
        assert [w.label for w in sub.windows] == ["1h"]

    def test_cached_selections_are_bounded(self) -> None:
        many = (spec("f", "COUNT", None, *[f"{n}m" for n in range(1, 10)]),)
        plan = ServingPlan.build("p", 1, many)
        keys = [f"f_{n}m" for n in range(1, 10)]
        combos = [(a, b, c) for a in keys for b in keys for c in keys if len({a, b, c}) == 3]
        for combo in combos[: MAX_CACHED_SELECTIONS + 50]:
            plan.select(list(combo))
        assert len(plan._cache) == MAX_CACHED_SELECTIONS
        # past the bound, answers are still right
        assert plan.select(list(combos[-1])).keys == sorted(set(combos[-1]), key=keys.index)


class TestDerived:
    """Derived features are evaluated after the merge, in the same answer."""

    DERIVED = (
        derived_spec("spend_per_add", "spend_1h / cart_adds_1h"),
        derived_spec("adds_or_zero", "coalesce(cart_adds_5m, 0)"),
    )
    NOW = 10_000_000

    def record(self) -> dict:
        events = [
            AppliedEvent(0, i, "add", self.NOW - 1000 * (i + 1), {"price": 2.0 + i})
            for i in range(3)
        ]
        return apply_batch(None, {"add": SPECS}, events, self.NOW).record

    def test_every_feature_answer_holds_derived_values_after_the_aggregates(self) -> None:
        plan = ServingPlan.build("p", 1, SPECS, self.DERIVED)
        values = plan.all.merger(self.NOW)(self.record())
        assert list(values)[-2:] == ["spend_per_add", "adds_or_zero"]
        assert values["spend_per_add"] == (2.0 + 3.0 + 4.0) / 3
        assert values["adds_or_zero"] == 3.0

    def test_a_user_without_record_gets_the_derived_value_of_empty_inputs(self) -> None:
        plan = ServingPlan.build("p", 1, SPECS, self.DERIVED)
        assert plan.all.empty["spend_per_add"] is None  # 0 / 0
        assert plan.all.empty["adds_or_zero"] == 0.0

    def test_selecting_only_a_derived_feature_reads_its_inputs_without_returning_them(
        self,
    ) -> None:
        plan = ServingPlan.build("p", 1, SPECS, self.DERIVED)
        selection = plan.select(["spend_per_add"])
        assert selection.keys == ["spend_per_add"]
        assert {s.name for s in selection.specs} == {"spend", "cart_adds"}
        assert selection.merger(self.NOW)(self.record()) == {"spend_per_add": 3.0}

    def test_an_input_asked_for_is_returned_beside_the_derived_value(self) -> None:
        plan = ServingPlan.build("p", 1, SPECS, self.DERIVED)
        selection = plan.select(["spend_per_add", "cart_adds_1h"])
        values = selection.merger(self.NOW)(self.record())
        assert values == {"cart_adds_1h": 3, "spend_per_add": 3.0}

    def test_a_derived_feature_reading_an_unserved_key_is_refused(self) -> None:
        with pytest.raises(ValueError, match="nope_5m"):
            ServingPlan.build("p", 1, SPECS, (derived_spec("x", "nope_5m + 1"),))
