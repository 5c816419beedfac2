"""Filters in SQL accept exactly the events the pure filter accepts: hypothesis draws
filters and event properties, chDB (and a ClickHouse server where CLICKHOUSE_URL is set)
evaluates `FilterSql`'s condition over the JSON the archive stores, and
`FeatureFilter.compile()` (the definition) is the oracle."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.core.settings import BackendSettings
from app.db.clickhouse import ChdbSink, ClickHouseClientSink, ClickHouseSink
from app.db.filter_sql import FilterSql
from app.tiles.filters import OPS, Condition, FeatureFilter
from tests.conftest import CLICKHOUSE_URL

FIELDS = ["price", "category", "flag", "tags"]
# Numbers within 2**53: the SQL compares numbers as 64-bit floats (see filter_sql.py).
numbers = st.integers(-(2**53), 2**53) | st.floats(
    -1e12, 1e12, allow_nan=False, allow_infinity=False
)
small_numbers = st.sampled_from([0, 1, 1.0, -1, 2.5, 50, 50.0, 99.99, -0.0])
texts = st.sampled_from(["", "a", "b", "sku-1", "Électro", "2026-12-01T10:00:00Z", "10"])
scalars = st.none() | st.booleans() | small_numbers | numbers | texts | st.text(max_size=6)
values = scalars | st.lists(small_numbers | texts, max_size=3)


@st.composite
def conditions(draw: st.DrawFn) -> Condition:
    op = draw(st.sampled_from(OPS))
    field = draw(st.sampled_from(FIELDS))
    if op in ("in", "not_in"):
        value: Any = draw(st.lists(st.booleans() | small_numbers | texts, max_size=4))
    elif op == "exists":
        value = draw(st.sampled_from([None, True, False]))
    else:
        value = draw(st.booleans() | small_numbers | numbers | texts | st.none())
    return Condition(field, op, value)


filters = st.builds(
    FeatureFilter,
    st.lists(conditions(), min_size=0, max_size=4).map(tuple),
    st.sampled_from(["all", "any"]),
)
properties = st.dictionaries(st.sampled_from(FIELDS), values, max_size=4)


@pytest.fixture(
    params=[
        "chdb",
        pytest.param(
            "clickhouse",
            marks=pytest.mark.skipif(
                not CLICKHOUSE_URL, reason="CLICKHOUSE_URL is not set: no ClickHouse server"
            ),
        ),
    ]
)
async def archive(
    request: pytest.FixtureRequest, backend_settings: BackendSettings
) -> AsyncIterator[ClickHouseClientSink]:
    """chDB, and a ClickHouse server where CLICKHOUSE_URL is set: the same SQL on both."""
    kind = ChdbSink if request.param == "chdb" else ClickHouseSink
    sink = kind(backend_settings)
    await sink.initialize()
    try:
        yield sink
    finally:
        await sink.close()


class TestFilterSqlEqualsTheFilter:
    async def test_sql_accepts_the_same_events_as_the_pure_filter(
        self, archive: ClickHouseClientSink
    ) -> None:
        cases: list[tuple[FeatureFilter, list[dict[str, Any]]]] = []

        @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
        @given(filters, st.lists(properties, min_size=1, max_size=12))
        def collect(feature_filter: FeatureFilter, events: list[dict[str, Any]]) -> None:
            cases.append((feature_filter, events))

        collect()
        for feature_filter, events in cases:
            builder = FilterSql()
            condition = builder.condition(feature_filter)
            # Stored as compute's messages carry them: json.dumps of the properties.
            texts_ = [json.dumps(p) for p in events]
            rows = await archive.query_rows(
                f"SELECT {condition} FROM (SELECT arrayJoin({{events:Array(String)}}) "  # noqa: S608
                "AS properties)",
                {"events": texts_, **builder.params},
            )
            accepts = feature_filter.compile()
            expected = [accepts(p) for p in events]
            assert [bool(r[0]) for r in rows] == expected, (feature_filter, events)
