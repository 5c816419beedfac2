"""The partials the archive's rows are turned into are the ones compute holds: for the
tiles whose state depends on the order events came in (a COUNT_DISTINCT tile past its
exact limit is an HLL sketch; HLL estimates depend on insertion order), replaying the
values in log order with compute's own `add` gives compute's tile."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from app.services.archive_features import distinct_partial
from app.tiles import sketch
from app.tiles.aggregations import aggregator

values = st.lists(st.integers(0, 400).map(lambda n: f"v{n}"), max_size=500)


class TestDistinctPartialIsComputesTile:
    @settings(max_examples=60, deadline=None)
    @given(values)
    def test_first_seen_order_gives_the_tile_compute_built_event_by_event(
        self, events: list[str]
    ) -> None:
        compute: Any = None
        maths = aggregator("COUNT_DISTINCT")
        for value in events:
            compute = maths.add(compute, 0, value)
        first_seen = list(dict.fromkeys(events))
        rebuilt = distinct_partial(first_seen) if first_seen else None
        assert rebuilt == compute
        if compute is not None:
            assert sketch.count_distinct([rebuilt]) == sketch.count_distinct([compute])
