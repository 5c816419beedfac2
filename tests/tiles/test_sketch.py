"""COUNT_DISTINCT partials: exact sets up to 64 values, HLL sketches beyond."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.tiles import sketch
from app.tiles.sketch import EXACT_LIMIT, DistinctPartial

# HLL at lg_k=11 has a relative standard error of about 2.3%; the brief's bound.
TOLERANCE = 0.05


def build(items: list[str]) -> DistinctPartial | None:
    partial: DistinctPartial | None = None
    for item in items:
        partial = sketch.add(partial, item)
    return partial


def split(items: list[str], parts: int, seed: int) -> list[DistinctPartial]:
    """Deals `items` into `parts` partials at random, as events fall into tiles."""
    rng = random.Random(seed)
    buckets: list[list[str]] = [[] for _ in range(parts)]
    for item in items:
        buckets[rng.randrange(parts)].append(item)
    return [p for p in (build(b) for b in buckets) if p is not None]


class TestExactPartials:
    @settings(max_examples=50)
    @given(st.lists(st.text(alphabet="abcdefgh", max_size=3), max_size=3 * EXACT_LIMIT))
    def test_stays_an_exact_sorted_set_up_to_the_limit(self, items: list[str]) -> None:
        partial = build(items)
        distinct = set(items)
        if not distinct:
            assert partial is None
        elif len(distinct) <= EXACT_LIMIT:
            assert partial == sorted(distinct)
            assert sketch.estimate(partial) == len(distinct)
        else:
            assert isinstance(partial, str)

    def test_adding_a_value_already_held_changes_nothing(self) -> None:
        partial = build(["a", "b"])
        assert sketch.add(partial, "a") == ["a", "b"]

    def test_add_never_modifies_its_input(self) -> None:
        partial = build([str(i) for i in range(EXACT_LIMIT)])
        before = list(partial or [])
        sketch.add(partial, "new")
        sketch.add(build(["x"]), "y")
        assert partial == before

    @settings(max_examples=50, deadline=None)
    @given(st.lists(st.integers(0, 10_000).map(str), max_size=3_000), st.integers(1, EXACT_LIMIT))
    def test_union_of_exact_partials_is_exact_whatever_its_size(
        self, items: list[str], chunk: int
    ) -> None:
        # Chunks of at most 64 distinct values keep every partial exact.
        distinct = list(dict.fromkeys(items))
        chunks = [distinct[i : i + chunk] for i in range(0, len(distinct), chunk)]
        # Each chunk twice (once reversed): values repeated across partials count once.
        partials = [p for c in chunks for p in (build(c), build(c[::-1])) if p is not None]
        assert all(isinstance(p, list) for p in partials)
        assert sketch.count_distinct(partials) == len(distinct)
        assert sketch.merge(partials) == (sorted(distinct) if distinct else None)


class TestSketchPartials:
    def test_the_65th_distinct_value_turns_the_set_into_a_sketch(self) -> None:
        partial = build([f"v{i}" for i in range(EXACT_LIMIT + 1)])
        assert isinstance(partial, str)
        assert sketch.estimate(partial) == EXACT_LIMIT + 1

    def test_a_sketch_is_json_serialisable_base64(self) -> None:
        partial = build([f"v{i}" for i in range(500)])
        assert json.loads(json.dumps(partial)) == partial
        assert sketch.estimate(json.loads(json.dumps(partial))) == sketch.estimate(partial)

    @settings(max_examples=40, deadline=None)
    @given(
        st.sets(st.integers(0, 10**9), min_size=EXACT_LIMIT + 1, max_size=400),
        st.integers(1, 60),
        st.integers(),
    )
    def test_union_with_any_sketch_estimates_within_tolerance(
        self, values: set[int], parts: int, seed: int
    ) -> None:
        items = [f"user-{v}" for v in values]
        # One tile over the limit is a sketch; the rest, with repeats that must not be
        # counted twice, fall into exact or sketch partials at random.
        first = build(items[: EXACT_LIMIT + 1])
        assert isinstance(first, str)
        partials = [first, *split(items[EXACT_LIMIT // 2 :] + items[:10], parts, seed)]
        estimate = sketch.count_distinct(partials)
        assert abs(estimate - len(items)) <= TOLERANCE * len(items)
        merged = sketch.merge(partials)
        assert merged is not None
        assert sketch.estimate(merged) == estimate

    @pytest.mark.parametrize("n", [1_000, 5_000, 20_000])
    def test_large_cardinalities_estimate_within_tolerance(self, n: int) -> None:
        items = [f"product-{i}" for i in range(n)]
        partials = split(items, 8, seed=n)
        assert any(isinstance(p, str) for p in partials)
        assert abs(sketch.count_distinct(partials) - n) <= TOLERANCE * n

    def test_exact_values_merged_into_a_sketch_are_counted(self) -> None:
        big = build([f"a{i}" for i in range(200)])
        small = build([f"b{i}" for i in range(50)])
        assert big is not None
        assert small is not None
        assert abs(sketch.count_distinct([big, small]) - 250) <= TOLERANCE * 250
        assert isinstance(sketch.merge([big, small]), str)

    def test_a_string_that_is_not_a_sketch_raises_value_error(self) -> None:
        with pytest.raises(ValueError, match="invalid COUNT_DISTINCT sketch"):
            sketch.estimate("not base64!")
        with pytest.raises(ValueError, match="invalid COUNT_DISTINCT sketch"):
            sketch.add("aGVsbG8=", "x")


def test_nothing_merges_to_none_and_counts_zero() -> None:
    assert sketch.merge([]) is None
    assert sketch.estimate(None) == 0
    assert sketch.count_distinct([]) == 0
