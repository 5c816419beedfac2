"""The record codec of the JSON online stores (Redis, SQLite): pydantic-core for speed,
with the meaning of `json` (what older versions wrote stays readable, non-finite floats
are refused)."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.db.online_store import decode_record, encode_record

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),  # beyond 64 bits too
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(),
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=30,
)
RECORDS = st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=5)


def same(got: Any, want: Any) -> None:
    # json.dumps tells 1 from 1.0 and True, and -0.0 from 0.0.
    assert json.dumps(got) == json.dumps(want)


class TestRoundTrip:
    @settings(max_examples=300)
    @given(RECORDS)
    def test_a_record_decodes_to_what_was_encoded(self, record: dict[str, Any]) -> None:
        same(decode_record(encode_record(record)), record)

    @settings(max_examples=300)
    @given(RECORDS)
    def test_json_written_by_json_dumps_decodes_as_json_loads_reads_it(
        self, record: dict[str, Any]
    ) -> None:
        # What the stores wrote before (ASCII escapes, "1e+16", ...) reads the same.
        text = json.dumps(record, separators=(",", ":"), allow_nan=False)
        same(decode_record(text.encode()), json.loads(text))
        same(decode_record(text), json.loads(text))

    def test_text_that_is_not_unicode_round_trips_through_json_escapes(self) -> None:
        record = {"last": [1, "sku-\ud800"]}
        encoded = encode_record(record)
        assert b"\\ud800" in encoded
        assert decode_record(encoded) == record

    def test_letters_of_nan_and_infinity_inside_strings_are_kept(self) -> None:
        record = {"NaN": "Infinity", "v": [-0.0, 1e16, 5e-324, "é"]}
        same(decode_record(encode_record(record)), record)


class TestRefusals:
    @pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
    def test_a_non_finite_float_is_refused(self, value: float) -> None:
        with pytest.raises(ValueError, match="not JSON compliant"):
            encode_record({"features": {"f": {"w": {"1h": {"1": [1, value]}}}}})

    def test_text_that_is_not_json_is_refused(self) -> None:
        with pytest.raises(ValueError, match="property name"):
            decode_record(b"{not json")
