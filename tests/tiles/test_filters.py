"""Compiled feature filters equal a brute-force reading of the rules in `filters.py`'s
docstring, for every operator, mode and value type (the compiled form takes shortcuts:
one condition without `all`, exact JSON types without the kind chain)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from app.tiles.filters import OPS, Condition, FeatureFilter

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.floats(-3, 3, allow_nan=False),
    st.sampled_from([0.0, -0.0, 1.0, 2**53, float("inf")]),
    st.text("ab1", max_size=2),
)
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=3), st.dictionaries(st.just("k"), SCALARS))
FIELDS = st.sampled_from(["a", "b"])
# A condition's value is a scalar or a list of them (the config API allows no more).
CONDITIONS = st.builds(
    Condition, FIELDS, st.sampled_from(OPS), st.one_of(SCALARS, st.lists(SCALARS, max_size=3))
)
FILTERS = st.builds(
    FeatureFilter,
    st.lists(CONDITIONS, min_size=1, max_size=3).map(tuple),
    st.sampled_from(["all", "any"]),
)
PROPERTIES = st.dictionaries(FIELDS, VALUES, max_size=2)


def family(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "text"
    return "other"


def equal(a: Any, b: Any) -> bool:
    return family(a) == family(b) and bool(a == b)


def holds(c: Condition, properties: dict[str, Any]) -> bool:
    """One condition, read off the module docstring rule by rule."""
    got = properties.get(c.field)
    if c.op == "exists":
        return (got is not None) if c.value is not False else got is None
    if got is None:
        return False  # absent or null: only `exists: false` holds
    if c.op == "eq":
        return equal(got, c.value)
    if c.op == "ne":
        return not equal(got, c.value)
    options = list(c.value) if isinstance(c.value, list | tuple) else [c.value]
    if c.op == "in":
        return any(equal(got, o) for o in options)
    if c.op == "not_in":
        return not any(equal(got, o) for o in options)
    if family(got) != family(c.value) or family(got) not in ("number", "text"):
        return False
    return bool(
        {"gt": got > c.value, "gte": got >= c.value, "lt": got < c.value, "lte": got <= c.value}[
            c.op
        ]
    )


class TestCompiledFilterEqualsTheRules:
    @settings(max_examples=2000, deadline=None)
    @given(FILTERS, PROPERTIES)
    def test_a_compiled_filter_accepts_exactly_what_the_rules_accept(
        self, feature_filter: FeatureFilter, properties: dict[str, Any]
    ) -> None:
        verdicts = [holds(c, properties) for c in feature_filter.conditions]
        want = any(verdicts) if feature_filter.mode == "any" else all(verdicts)
        assert feature_filter.compile()(properties) is want

    def test_true_is_not_a_number_for_an_ordered_condition(self) -> None:
        accepts = FeatureFilter((Condition("price", "gte", 0),)).compile()
        assert accepts({"price": 1})
        assert accepts({"price": 0.5})
        assert not accepts({"price": True})
        assert not accepts({"price": "1"})
