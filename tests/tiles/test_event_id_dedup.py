"""The record's second layer of exactly-once: event ids it applied, remembered for the
dedup horizon, so a second copy of an event in the log (another offset, another
partition, another batch) counts once. Pure code: no server."""

from __future__ import annotations

from typing import Any

from app.tiles.aggregations import Aggregation
from app.tiles.codec import encode_record
from app.tiles.features import FeatureSpec
from app.tiles.record import (
    AppliedEvent,
    DedupPolicy,
    apply_batch,
    id_hash,
    pack_ids,
    remembered,
    serve,
    unpack_ids,
)
from app.tiles.windows import parse_window

NOW = 1_767_225_600_000
MINUTE = 60_000
HOUR = 60 * MINUTE
COUNT = FeatureSpec("n", Aggregation.COUNT, None, (parse_window("1h"), parse_window("24h")))
SUM = FeatureSpec("spend", Aggregation.SUM, "price", (parse_window("1h"),))
SPECS: dict[str, list[FeatureSpec]] = {"cart": [COUNT, SUM], "view": []}


def ev(offset: int, event_id: str | None, *, t_ms: int = NOW - MINUTE, partition: int = 0,
       name: str = "cart", price: float = 2.0) -> AppliedEvent:  # fmt: skip
    return AppliedEvent(partition, offset, name, t_ms, {"price": price}, event_id)


def values(record: dict[str, Any], now_ms: int = NOW) -> dict[str, Any]:
    return serve(record, [COUNT, SUM], now_ms)


class TestSecondCopiesCountOnce:
    def test_a_copy_at_a_later_offset_in_a_later_batch_is_a_duplicate(self):
        first = apply_batch(None, SPECS, [ev(1, "a"), ev(2, "b")], NOW)
        again = apply_batch(first.record, SPECS, [ev(7, "a"), ev(8, "c")], NOW + MINUTE)
        assert (again.applied, again.skipped_duplicate, again.duplicate_ids) == (1, 1, 1)
        assert values(again.record, NOW + MINUTE)["n_1h"] == 3
        assert values(again.record, NOW + MINUTE)["spend_1h"] == 6.0

    def test_a_copy_on_another_partition_is_a_duplicate(self):
        # After a repartition (more partitions) a user's key may move: offsets can't tell.
        first = apply_batch(None, SPECS, [ev(1, "a", partition=0)], NOW)
        again = apply_batch(first.record, SPECS, [ev(1, "a", partition=5)], NOW)
        assert again.duplicate_ids == 1
        assert values(again.record)["n_1h"] == 1

    def test_two_copies_in_one_batch_count_once(self):
        result = apply_batch(None, SPECS, [ev(1, "a"), ev(2, "a"), ev(3, "a")], NOW)
        assert (result.applied, result.skipped_duplicate, result.duplicate_ids) == (1, 2, 2)
        assert result.fresh == (0,)
        assert values(result.record)["n_1h"] == 1

    def test_a_redelivered_offset_is_still_a_duplicate_by_offset_not_by_id(self):
        first = apply_batch(None, SPECS, [ev(1, "a")], NOW)
        again = apply_batch(first.record, SPECS, [ev(1, "a")], NOW)
        assert (again.skipped_duplicate, again.duplicate_ids) == (1, 0)

    def test_events_without_an_id_are_deduplicated_by_offset_only(self):
        result = apply_batch(None, SPECS, [ev(1, None), ev(2, None)], NOW)
        assert result.applied == 2
        assert result.record["ids"] == {}

    def test_the_input_record_is_not_modified(self):
        first = apply_batch(None, SPECS, [ev(1, "a")], NOW)
        ids_before = dict(first.record["ids"])
        apply_batch(first.record, SPECS, [ev(2, "b")], NOW)
        assert first.record["ids"] == ids_before


class TestWhatIsRemembered:
    def test_only_ids_of_events_that_fed_a_feature_on_time_are_kept(self):
        late = NOW - 3 * 24 * HOUR  # older than every window
        result = apply_batch(
            None, SPECS, [ev(1, "on-time"), ev(2, "late", t_ms=late), ev(3, "v", name="view")], NOW
        )
        assert remembered(result.record["ids"]) == {id_hash("on-time")}

    def test_ids_are_bucketed_by_apply_time_and_forgotten_after_the_horizon(self):
        policy = DedupPolicy(horizon_ms=24 * HOUR)
        first = apply_batch(None, SPECS, [ev(1, "a")], NOW, dedup=policy)
        assert list(first.record["ids"]) == [str(NOW // policy.bucket_ms)]
        # Inside the horizon the id is still known ...
        later = NOW + 23 * HOUR
        inside = apply_batch(first.record, SPECS, [ev(2, "a", t_ms=later)], later, dedup=policy)
        assert inside.duplicate_ids == 1
        # ... one horizon and a bucket later it is gone, with its bucket.
        past = NOW + 25 * HOUR
        outside = apply_batch(first.record, SPECS, [ev(2, "b", t_ms=past)], past, dedup=policy)
        assert list(outside.record["ids"]) == [str(past // policy.bucket_ms)]

    def test_beyond_max_ids_the_oldest_are_forgotten_and_counted(self):
        policy = DedupPolicy(max_ids=100)
        record: dict[str, Any] | None = None
        offset = 0
        forgotten = 0
        for hour in range(3):
            now = NOW + hour * HOUR
            batch = [ev(offset + i, f"h{hour}-{i}", t_ms=now - 1) for i in range(60)]
            offset += 60
            result = apply_batch(record, SPECS, batch, now, dedup=policy)
            record, forgotten = result.record, forgotten + result.forgotten_ids
        assert record is not None
        kept = [h for bucket in record["ids"].values() for h in unpack_ids(bucket)]
        assert len(kept) == 100
        assert forgotten == 80
        assert id_hash("h2-59") in kept
        assert id_hash("h0-0") not in kept
        # Oldest first, also inside a bucket.
        assert id_hash("h1-19") not in kept
        assert id_hash("h1-20") in kept

    def test_a_remembered_id_costs_eight_bytes_stored_apart_from_the_tiles(self):
        # The bound the module docstring states: 8 bytes an id in the ids blob, which
        # serving never reads.
        one = apply_batch(None, SPECS, [ev(0, "evt-0")], NOW).record
        full = apply_batch(None, SPECS, [ev(i, f"evt-{i}") for i in range(1001)], NOW).record
        assert len(encode_record(full).ids) - len(encode_record(one).ids) == 8 * 1000

    def test_the_latest_applied_event_time_is_kept_for_freshness(self):
        first = apply_batch(None, SPECS, [ev(1, "a", t_ms=NOW - 5 * MINUTE)], NOW)
        assert first.record["last_event_ms"] == NOW - 5 * MINUTE
        older = apply_batch(first.record, SPECS, [ev(2, "b", t_ms=NOW - HOUR + 1)], NOW)
        assert older.record["last_event_ms"] == NOW - 5 * MINUTE

    def test_a_bucket_packs_its_hashes_in_order_and_back(self):
        hashes = [id_hash(f"evt-{i}") for i in range(5)]
        assert unpack_ids(pack_ids(hashes)) == tuple(hashes)
        assert unpack_ids(pack_ids([])) == ()

    def test_hashes_are_stable_non_negative_63_bit_integers(self):
        assert id_hash("evt-1") == id_hash("evt-1") != id_hash("evt-2")
        assert all(0 <= id_hash(f"x{i}") < 2**63 for i in range(1000))
