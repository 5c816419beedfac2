"""The pure feature rules (windows, source event and field, served keys)."""

from __future__ import annotations

import pytest

from app.schemas.deployment import AggregateFeatureSnapshot, DerivedFeatureSnapshot
from app.schemas.pipeline import EventDefinition, EventField
from app.schemas.template import PipelineTemplate
from app.services.derived_rules import catalogue, expression_problems
from app.services.feature_rules import (
    FeatureSpec,
    event_problems,
    normalize_windows,
    served_key_clashes,
    served_keys,
    served_keys_of,
    spec_of,
)
from app.services.templates import list_templates

EVENTS = [
    EventDefinition(
        name="purchase",
        fields=[EventField(name="revenue", type="number"), EventField(name="sku", type="string")],
    )
]


def spec(**overrides: object) -> FeatureSpec:
    values: dict[str, object] = {
        "name": "spend",
        "source_event": "purchase",
        "aggregation": "SUM",
        "field": "revenue",
        "time_windows": ["30d"],
    }
    values.update(overrides)
    return FeatureSpec(**values)  # type: ignore[arg-type]


class TestWindows:
    def test_windows_are_canonical_deduplicated_and_sorted_by_duration(self) -> None:
        labels, errors = normalize_windows(["7d", "5m", "005m", "1h", "60m", "24h"])
        assert (labels, errors) == (["5m", "1h", "60m", "24h", "7d"], [])

    def test_each_bad_window_is_reported_at_its_index(self) -> None:
        labels, errors = normalize_windows(["5m", "0m", "1w", "91d"])
        assert labels == ["5m"]
        assert [e.loc for e in errors] == [["body", "time_windows", i] for i in (1, 2, 3)]


class TestEventProblems:
    def test_a_fitting_feature_has_no_problem(self) -> None:
        assert event_problems(spec(), EVENTS) == []

    @pytest.mark.parametrize(
        ("overrides", "kind"),
        [
            ({"source_event": "refund"}, "event_missing"),
            ({"aggregation": "COUNT"}, "field_not_allowed"),
            ({"field": None}, "field_required"),
            ({"field": "amount"}, "field_missing"),
            ({"field": "sku"}, "field_not_numeric"),
        ],
    )
    def test_each_rule_names_its_problem(self, overrides: dict[str, object], kind: str) -> None:
        assert [p.type for p in event_problems(spec(**overrides), EVENTS)] == [kind]

    def test_count_distinct_takes_a_string_field(self) -> None:
        assert event_problems(spec(aggregation="COUNT_DISTINCT", field="sku"), EVENTS) == []


class TestServedKeys:
    def test_keys_are_name_underscore_window(self) -> None:
        assert served_keys("cart_adds", ["5m", "1h"]) == ["cart_adds_5m", "cart_adds_1h"]

    def test_a_key_produced_by_another_feature_is_a_clash(self) -> None:
        # Impossible with today's grammars (windows hold no "_"); the guard must still work.
        other = snap(name="a", time_windows=["b_5m"])
        assert served_key_clashes(["a_b_5m", "a_b_1h"], [other]) == [("a_b_5m", "a")]

    def test_distinct_names_never_clash(self) -> None:
        others = [snap(name="cart", time_windows=["1h"]), snap(name="cart_1h", time_windows=["5m"])]
        assert served_key_clashes(["cart_1_1h", "cart_1_5m"], others) == []

    def test_a_derived_feature_serves_its_name_and_clashes_with_a_window_key(self) -> None:
        derived = DerivedFeatureSnapshot(
            id="d", name="cart_1h", pipeline_id="p", expression="1", enabled=True
        )
        assert served_keys_of(derived) == ["cart_1h"]
        assert served_key_clashes(["cart_1h", "cart_5m"], [derived]) == [("cart_1h", "cart_1h")]


def snap(name: str, time_windows: list[str]) -> AggregateFeatureSnapshot:
    return AggregateFeatureSnapshot(
        id="a",
        name=name,
        pipeline_id="p",
        source_event="e",
        aggregation="COUNT",
        field=None,
        time_windows=time_windows,
        enabled=True,
    )


@pytest.mark.parametrize("template", list_templates(), ids=lambda t: t.name)
def test_every_suggested_feature_fits_its_template(template: object) -> None:
    from app.schemas.template import PipelineTemplate

    assert isinstance(template, PipelineTemplate)
    for feature in template.suggested_features:
        if feature.kind == "derived":
            continue  # checked against the template's aggregates by the next test
        labels, errors = normalize_windows(feature.time_windows)
        assert errors == []
        assert labels == feature.time_windows
        problem = event_problems(spec_of(feature), template.events)
        assert problem == [], feature.name


@pytest.mark.parametrize("template", list_templates(), ids=lambda t: t.name)
def test_every_suggested_derived_feature_reads_the_templates_number_keys(
    template: PipelineTemplate,
) -> None:
    events = {e.name: e for e in template.events}
    aggregates = [f for f in template.suggested_features if f.kind == "aggregate"]
    keys = catalogue(aggregates, [], lambda f: events.get(f.source_event))
    for feature in template.suggested_features:
        if feature.kind == "derived":
            expression, problems = expression_problems(feature.expression, keys, ["x"])
            assert problems == [], feature.name
            assert expression is not None
            assert expression.text == feature.expression  # written in canonical form
