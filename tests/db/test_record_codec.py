"""The stored form of a record (`app/tiles/codec.py`): lossless for every record compute
builds and for any JSON-compatible dict, records of the JSON form stored before the
upgrade still read, the event ids travel in their own blob, and what JSON refuses is
refused."""

from __future__ import annotations

import json
import math
import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.tiles.aggregations import Aggregation
from app.tiles.codec import RecordRejected, decode_record, encode_record
from app.tiles.features import FeatureSpec
from app.tiles.record import AppliedEvent, apply_batch, id_hash, pack_ids
from app.tiles.windows import parse_window

PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NOW = 1_700_000_000_000

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

# Partials of every aggregation's shape (aggregations.py), and columns mixing them.
TIMES = st.integers(0, 2**53)
PARTIAL_KINDS = [
    st.integers(0, 10**6),  # COUNT
    st.integers(),  # RECENCY, and ints of any size
    st.floats(allow_nan=False, allow_infinity=False),  # SUM, MIN, MAX
    st.tuples(st.floats(allow_nan=False, allow_infinity=False), st.integers(1, 99)).map(list),
    st.tuples(TIMES, JSON_VALUES).map(list),  # LAST, FIRST
    st.lists(st.text(max_size=6), max_size=6).map(sorted),  # COUNT_DISTINCT, exact
    st.text(max_size=20),  # COUNT_DISTINCT, a sketch
    st.lists(st.tuples(TIMES, JSON_VALUES).map(list), max_size=3),  # LAST_N
    st.dictionaries(st.text(max_size=4), st.integers(1, 9), max_size=3),  # TOP_K
    JSON_VALUES,
]


@st.composite
def tiles(draw: st.DrawFn) -> dict[str, Any]:
    """A window's tiles: keys from consecutive to scattered (any order), and partials of
    one kind (as compute writes them) or, sometimes, of any mix."""
    numbers = [draw(st.integers(-(2**40), 2**40))]
    for step in draw(st.lists(st.integers(-3, 70), max_size=8)):
        numbers.append(numbers[-1] + step)
    kind = draw(st.sampled_from([*PARTIAL_KINDS, st.one_of(PARTIAL_KINDS)]))
    return {str(n): draw(kind) for n in numbers}


@st.composite
def shaped_records(draw: st.DrawFn) -> dict[str, Any]:
    """Records of the shape `record.py` builds, with partials of every kind."""
    features = {
        name: {
            "fp": draw(st.text(max_size=12)),
            "w": draw(st.dictionaries(st.sampled_from(["5m", "1h", "24h", "30d"]), tiles())),
        }
        for name in draw(st.lists(st.text(max_size=10), max_size=4, unique=True))
    }
    record: dict[str, Any] = {
        "features": features,
        "offsets": draw(st.dictionaries(st.integers(0, 64).map(str), st.integers(0, 2**62))),
    }
    if draw(st.booleans()):
        buckets = draw(st.dictionaries(st.integers(0, 2**40).map(str), st.lists(TIMES), max_size=3))
        record["ids"] = {k: pack_ids([h % 2**63 for h in v]) for k, v in buckets.items()}
    record["updated_ms"] = draw(TIMES)
    record["last_event_ms"] = draw(TIMES)
    return record


def typed(value: Any) -> Any:
    """`value` with every type spelt out, so 1 != 1.0 != True and -0.0 != 0.0."""
    if isinstance(value, dict):
        return ("dict", sorted((k, typed(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return ("list", [typed(v) for v in value])
    if isinstance(value, float):
        return ("float", value.hex())
    return (type(value).__name__, value)


def round_trip(record: dict[str, Any]) -> dict[str, Any]:
    return decode_record(*encode_record(record))


class TestRoundTrip:
    @PROPERTY
    @given(shaped_records())
    def test_a_record_of_compute_shape_decodes_to_what_was_encoded(
        self, record: dict[str, Any]
    ) -> None:
        assert typed(round_trip(record)) == typed(record)

    @PROPERTY
    @given(RECORDS)
    def test_any_json_compatible_record_decodes_to_what_was_encoded(
        self, record: dict[str, Any]
    ) -> None:
        assert typed(round_trip(record)) == typed(record)

    def test_records_compute_builds_decode_to_what_was_encoded(self) -> None:
        record = heavy_record(3_000)
        assert record["ids"]
        assert record["features"]
        assert round_trip(record) == record
        assert typed(round_trip(record)) == typed(record)

    def test_the_tile_order_of_each_window_is_kept(self) -> None:
        record = {"features": {"f": {"fp": "x", "w": {"1h": {"9": 1, "3": 2, "10": 3}}}}}
        assert list(round_trip(record)["features"]["f"]["w"]["1h"]) == ["9", "3", "10"]

    def test_tile_keys_that_are_not_plain_integers_round_trip(self) -> None:
        for key in [
            "007",
            "+1",
            "-0",
            " 1",
            "1.0",
            "x",
            "\u0661",
        ]:  # the last: ARABIC-INDIC DIGIT ONE
            record = {"features": {"f": {"fp": "x", "w": {"1h": {key: 1, "2": 2}}}}}
            assert typed(round_trip(record)) == typed(record)

    def test_text_that_is_not_unicode_round_trips(self) -> None:
        record = {"features": {"f": {"fp": "x", "w": {"1h": {"1": [1, "sku-\ud800"]}}}}}
        assert round_trip(record) == record
        assert round_trip({"last": [1, "sku-\ud800"]}) == {"last": [1, "sku-\ud800"]}

    def test_letters_of_nan_and_infinity_inside_strings_are_kept(self) -> None:
        record = {"NaN": "Infinity", "v": [-0.0, 1e16, 5e-324, "é"]}
        assert typed(round_trip(record)) == typed(record)


class TestIdsApart:
    def test_the_tiles_blob_alone_decodes_to_the_record_without_its_ids(self) -> None:
        record = heavy_record(500)
        tiles, ids = encode_record(record)
        without = {k: v for k, v in record.items() if k != "ids"}
        assert decode_record(tiles) == without
        assert decode_record(tiles, ids) == record

    def test_a_record_without_ids_has_an_empty_ids_blob(self) -> None:
        tiles, ids = encode_record({"features": {}, "offsets": {}})
        assert ids == b""
        assert "ids" not in decode_record(tiles, ids)

    def test_a_remembered_id_costs_eight_bytes_and_never_touches_the_tiles_blob(self) -> None:
        few = {"ids": {"5": pack_ids([1])}, "features": {}}
        many = {"ids": {"5": pack_ids([id_hash(f"e{i}") for i in range(1001)])}, "features": {}}
        assert len(encode_record(many).ids) - len(encode_record(few).ids) == 8_000
        assert encode_record(many).features == encode_record(few).features

    def test_ids_of_another_shape_round_trip(self) -> None:
        for ids in [{"5": "not base64!"}, {"x": pack_ids([1])}, [1, 2], {"5": "AAAA"}, None]:
            assert typed(round_trip({"ids": ids})) == typed({"ids": ids})


class TestRecordsStoredBefore:
    @PROPERTY
    @given(RECORDS)
    def test_json_written_by_json_dumps_decodes_as_json_loads_reads_it(
        self, record: dict[str, Any]
    ) -> None:
        # What the stores wrote before (ASCII escapes, "1e+16", ...) reads the same.
        text = json.dumps(record, separators=(",", ":"), allow_nan=False)
        assert typed(decode_record(text.encode())) == typed(json.loads(text))
        assert typed(decode_record(text)) == typed(json.loads(text))

    def test_a_json_record_keeps_its_own_ids_when_read_without_the_ids_blob(self) -> None:
        record = heavy_record(200)
        stored = json.dumps(record, separators=(",", ":")).encode()
        assert decode_record(stored) == record
        assert decode_record(stored, b"") == record


class TestRefusals:
    @pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
    def test_a_non_finite_float_is_refused(self, value: float) -> None:
        with pytest.raises(RecordRejected, match="not JSON compliant"):
            encode_record({"features": {"f": {"fp": "x", "w": {"1h": {"1": [1, value]}}}}})
        with pytest.raises(RecordRejected, match="not JSON compliant"):
            encode_record({"features": [value]})

    @pytest.mark.parametrize(
        "blob",
        [b"{not json", b"\x09abc", b"\x01not zstd", b"\x02", b""],
        ids=["json", "format", "zstd", "empty zstd", "empty"],
    )
    def test_bytes_that_are_no_record_are_refused(self, blob: bytes) -> None:
        with pytest.raises(ValueError, match="not a stored record"):
            decode_record(blob)

    def test_ids_cut_short_are_refused(self) -> None:
        tiles, ids = encode_record({"ids": {"5": pack_ids([1, 2, 3])}})
        for cut in (ids[:-1], ids[:5], b"\x07"):
            with pytest.raises(ValueError, match=r"not stored event ids|cut short"):
                decode_record(tiles, cut)


class TestSize:
    def test_a_heavy_record_of_every_aggregation_stores_over_four_times_smaller(self) -> None:
        # bench/record_bench.py prints the figures (the bench's eight basic aggregations:
        # 6-7x); this pins the order of the gain on all eleven, whose LAST_N and TOP_K
        # partials and sums' float digits (107.20000000000002) shrink least.
        record = heavy_record(3_000)
        without = {k: v for k, v in record.items() if k != "ids"}
        as_json = json.dumps(without, separators=(",", ":")).encode()
        assert len(as_json) >= 4 * len(encode_record(record).features)

    def test_a_record_with_few_tiles_a_feature_is_zstd_of_its_json_a_dense_one_compact(
        self,
    ) -> None:
        assert encode_record(heavy_record(5)).features[:1] == b"\x02"
        assert encode_record(heavy_record(500)).features[:1] == b"\x01"


# -- records as compute builds them ------------------------------------------------------------
WINDOWS = tuple(parse_window(w) for w in ("5m", "1h", "24h", "7d", "30d"))
SPECS = {
    "view": [
        FeatureSpec("views", Aggregation.COUNT, None, WINDOWS),
        FeatureSpec("skus", Aggregation.COUNT_DISTINCT, "sku", WINDOWS),
        FeatureSpec("last_sku", Aggregation.LAST, "sku", WINDOWS),
        FeatureSpec("recent", Aggregation.LAST_N, "sku", WINDOWS, size=5),
    ],
    "buy": [
        FeatureSpec("spend", Aggregation.SUM, "price", WINDOWS),
        FeatureSpec("basket", Aggregation.AVG, "price", WINDOWS),
        FeatureSpec("top", Aggregation.TOP_K, "sku", WINDOWS, size=3),
        FeatureSpec("since", Aggregation.RECENCY, None, WINDOWS),
    ],
}


def heavy_record(events: int) -> dict[str, Any]:
    """One user's record after `events` events ~5 minutes apart, with their ids."""
    rng = random.Random(events)
    record = None
    t = NOW - events * 150_000
    for start in range(0, events, 100):
        batch = []
        for i in range(start, min(events, start + 100)):
            t += rng.randrange(1, 300_000)
            properties = {
                "sku": f"sku-{rng.randrange(1000)}",
                "price": rng.randrange(1, 9999) / 100,
            }
            batch.append(AppliedEvent(0, i, rng.choice(["view", "buy"]), t, properties, f"e{i}"))
        record = apply_batch(record, SPECS, batch, t).record
    assert record is not None
    return record
