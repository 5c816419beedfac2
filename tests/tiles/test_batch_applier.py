"""`apply_batch` (and `BatchApplier`, its per-interval form) equals the per-event
reference: `features.apply_value` for each event and feature, then `prune`.

`test_aggregators.py` checks that reference against a brute-force oracle; this file
pins the precomputed batch path to it, down to the JSON bytes (key order included).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.tiles.aggregations import Aggregation
from app.tiles.features import MAX_FUTURE_MS, FeatureSpec, Timing, apply_event, prune
from app.tiles.filters import Condition, FeatureFilter
from app.tiles.record import (
    AppliedEvent,
    BatchApplier,
    DedupPolicy,
    apply_batch,
    empty_record,
    id_hash,
    pack_ids,
    unpack_ids,
)
from app.tiles.windows import parse_window

NOW = 1_700_000_000_000
MINUTE, HOUR, DAY = 60_000, 3_600_000, 86_400_000
LABELS = ["1m", "5m", "7m", "1h", "24h", "7d"]
EVENTS = ["view", "cart", "unconfigured"]
VALUES = st.one_of(
    st.none(),
    st.integers(-50, 50),
    st.floats(-1e3, 1e3, allow_nan=False),
    st.sampled_from([0.0, -0.0, True, "a", "b", "1", 1.0, [1], {"k": 1}, float("inf")]),
)
PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def reference(
    record: Mapping[str, Any] | None,
    specs_by_event: Mapping[str, Sequence[FeatureSpec]],
    events: Sequence[AppliedEvent],
    now_ms: int,
) -> tuple[dict[str, Any], int, int, int, int]:
    """apply_batch as first written: copy, apply_value per event and spec, prune."""
    specs = {s.name: s for ss in specs_by_event.values() for s in ss}
    out = copy.deepcopy(dict(record)) if record is not None else empty_record()
    features = out.setdefault("features", {})
    out["features"] = features = {
        n: {"fp": e.get("fp"), "w": e["w"]} for n, e in features.items() if n in specs
    }
    for name, entry in features.items():
        if entry["fp"] != specs[name].fingerprint:
            features[name] = {"fp": specs[name].fingerprint, "w": {}}
    offsets = out.setdefault("offsets", {})
    policy = DedupPolicy()
    oldest = (now_ms - policy.horizon_ms) // policy.bucket_ms
    ids = {k: list(unpack_ids(v)) for k, v in out.get("ids", {}).items() if int(k) >= oldest}
    seen = {h for bucket in ids.values() for h in bucket}
    new_ids = []
    last_event_ms = out.get("last_event_ms", 0)
    applied = duplicates = late = future = 0
    for event in events:
        last = offsets.get(str(event.partition))
        if last is not None and event.offset <= last:
            duplicates += 1
            continue
        offsets[str(event.partition)] = event.offset
        h = None if event.event_id is None else id_hash(event.event_id)
        if h is not None and h in seen:
            duplicates += 1
            continue
        if h is not None:
            seen.add(h)
        verdicts = []
        for spec in specs_by_event.get(event.event, ()):
            entry = features.setdefault(spec.name, {"fp": spec.fingerprint, "w": {}})
            verdicts.append(apply_event(entry["w"], spec, event.t_ms, event.properties, now_ms))
        if verdicts and all(v is Timing.FUTURE for v in verdicts):
            future += 1
        elif verdicts and Timing.ON_TIME not in verdicts:
            late += 1
        else:
            applied += 1
        if Timing.ON_TIME in verdicts:
            last_event_ms = max(last_event_ms, event.t_ms)
            if h is not None:
                new_ids.append(h)
    for name in list(features):
        prune(features[name]["w"], specs[name], now_ms)
        if not features[name]["w"]:
            del features[name]
    if new_ids:
        bucket = str(now_ms // policy.bucket_ms)
        ids[bucket] = ids.get(bucket, []) + new_ids
    out["ids"] = {k: pack_ids(v) for k, v in ids.items()}
    out["updated_ms"] = now_ms
    out["last_event_ms"] = last_event_ms
    return out, applied, duplicates, late, future


# Filters on the properties the batches carry ("a", "b"), of every operator, with
# values of the kinds the batches draw (numbers, short text, booleans).
FILTER_VALUES = st.one_of(st.integers(-5, 5), st.text("abc", max_size=2), st.booleans())
CONDITIONS = st.one_of(
    st.builds(
        Condition,
        st.sampled_from(["a", "b"]),
        st.sampled_from(["eq", "ne", "gt", "gte", "lt", "lte"]),
        FILTER_VALUES,
    ),
    st.builds(
        Condition,
        st.sampled_from(["a", "b"]),
        st.sampled_from(["in", "not_in"]),
        st.lists(FILTER_VALUES, min_size=1, max_size=3),
    ),
    st.builds(Condition, st.sampled_from(["a", "b"]), st.just("exists"), st.booleans()),
)
FILTERS = st.builds(
    FeatureFilter,
    st.lists(CONDITIONS, min_size=1, max_size=2).map(tuple),
    st.sampled_from(["all", "any"]),
)


@st.composite
def spec_sets(draw: st.DrawFn) -> dict[str, list[FeatureSpec]]:
    """Up to 4 features over 2 events, any aggregation, field and windows."""
    by_event: dict[str, list[FeatureSpec]] = {"view": [], "cart": []}
    for n in range(draw(st.integers(1, 4))):
        aggregation = draw(st.sampled_from(Aggregation))
        fieldless = aggregation in (Aggregation.COUNT, Aggregation.RECENCY)
        field = None if fieldless else draw(st.sampled_from(["a", "b"]))
        sized = aggregation in (Aggregation.LAST_N, Aggregation.TOP_K)
        size = draw(st.integers(1, 4)) if sized else None
        labels = draw(st.lists(st.sampled_from(LABELS), min_size=1, max_size=3, unique=True))
        spec = FeatureSpec(
            f"f{n}",
            aggregation,
            field,
            tuple(parse_window(w) for w in labels),
            size=size,
            filter=draw(st.one_of(st.none(), FILTERS)),
        )
        for event in draw(st.lists(st.sampled_from(["view", "cart"]), min_size=1, unique=True)):
            by_event[event].append(spec)
    return by_event


@st.composite
def batches(draw: st.DrawFn, now_ms: int) -> list[AppliedEvent]:
    """Events around `now_ms` on two partitions, offsets mostly rising with repeats:
    late, on the first readable ms of some window (and 1 ms either side), recent,
    future, and just past the future limit."""
    windows = [parse_window(label) for label in LABELS]
    edges = [w.tile_range(now_ms)[0] * w.tile_ms - now_ms for w in windows]
    out = []
    for _ in range(draw(st.integers(0, 20))):
        t = now_ms + draw(
            st.one_of(
                st.integers(-9 * DAY, MAX_FUTURE_MS + MINUTE),
                st.integers(-2 * MINUTE, 2 * MINUTE),
                st.sampled_from(edges).flatmap(lambda e: st.integers(e - 1, e + 1)),
                st.sampled_from([0, MAX_FUTURE_MS, MAX_FUTURE_MS + 1, -HOUR, -DAY]),
            )
        )
        properties = draw(st.dictionaries(st.sampled_from(["a", "b"]), VALUES, max_size=2))
        out.append(
            AppliedEvent(
                draw(st.integers(0, 1)),
                draw(st.integers(0, 30)),
                draw(st.sampled_from(EVENTS)),
                t,
                properties,
                # A small pool, so second copies of one event id (on any offset) occur.
                draw(st.one_of(st.none(), st.sampled_from(["e1", "e2", "e3", "e4", "e5"]))),
            )
        )
    return out


def same(got: Any, want: Any) -> None:
    # Equal, and equal as JSON text: same key order, 1 vs 1.0 and -0.0 vs 0.0 told apart.
    assert got == want
    assert json.dumps(got) == json.dumps(want)


class TestEqualsThePerEventReference:
    @PROPERTY
    @given(spec_sets(), spec_sets(), st.data())
    def test_apply_batch_equals_apply_value_then_prune(
        self,
        before_specs: dict[str, list[FeatureSpec]],
        specs: dict[str, list[FeatureSpec]],
        data: st.DataObject,
    ) -> None:
        # A record written under some config, maybe read back from JSON, then a batch
        # under the same or another config (dropped features and windows, new
        # fingerprints), later.
        # Any time before, or one or two tiles of some window before: then the record's
        # oldest tiles are exactly the ones this batch's prune must drop.
        tiles = [parse_window(label).tile_ms for label in LABELS]
        earlier = NOW - data.draw(
            st.one_of(
                st.integers(0, 2 * DAY),
                st.sampled_from(tiles).flatmap(lambda t: st.sampled_from([t, 2 * t, t + 1])),
            )
        )
        first, *_ = reference(None, before_specs, data.draw(batches(earlier)), earlier)
        if data.draw(st.booleans()):
            first = json.loads(json.dumps(first))
        if data.draw(st.booleans()):
            specs = before_specs
        events = data.draw(batches(NOW))
        snapshot = copy.deepcopy(first)

        result = apply_batch(first, specs, events, NOW)

        record, *counts = reference(first, specs, events, NOW)
        same(result.record, record)
        assert [result.applied, result.skipped_duplicate, result.late, result.future] == counts
        same(first, snapshot)  # the input record is untouched

    @PROPERTY
    @given(spec_sets(), st.data())
    def test_from_no_record(self, specs: dict[str, list[FeatureSpec]], data: st.DataObject):
        events = data.draw(batches(NOW))
        result = apply_batch(None, specs, events, NOW)
        record, *counts = reference(None, specs, events, NOW)
        same(result.record, record)
        assert [result.applied, result.skipped_duplicate, result.late, result.future] == counts

    @pytest.mark.parametrize("label", LABELS)
    def test_the_tile_that_just_left_the_range_is_pruned_beside_recent_ones(
        self, label: str
    ) -> None:
        window = parse_window(label)
        spec = FeatureSpec("f", Aggregation.COUNT, None, (window,))
        first_ms = window.tile_range(NOW)[0] * window.tile_ms
        # Written one tile ago: its oldest tile and a recent one.
        earlier = NOW - window.tile_ms
        events = [AppliedEvent(0, 1, "view", first_ms, {}), AppliedEvent(0, 2, "view", earlier, {})]
        record, *_ = reference(None, {"view": [spec]}, events, earlier)
        assert len(record["features"]["f"]["w"][label]) == 2

        later = NOW + window.tile_ms
        result = apply_batch(record, {"view": [spec]}, [], later)

        same(result.record, reference(record, {"view": [spec]}, [], later)[0])
        assert len(result.record["features"]["f"]["w"][label]) == 1

    def test_unknown_top_level_keys_of_the_record_are_kept(self) -> None:
        spec = FeatureSpec("f", Aggregation.COUNT, None, (parse_window("1h"),))
        record = {**empty_record(), "extra": [1]}
        result = apply_batch(record, {"view": [spec]}, [AppliedEvent(0, 1, "view", NOW, {})], NOW)
        assert result.record["extra"] == [1]


class TestBatchApplier:
    @PROPERTY
    @given(spec_sets(), st.data(), st.integers(0, 7 * DAY), st.floats(0, 1))
    def test_equals_apply_batch_at_every_time_it_covers(
        self,
        specs: dict[str, list[FeatureSpec]],
        data: st.DataObject,
        later: int,
        where: float,
    ) -> None:
        built_at = NOW + later
        applier = BatchApplier(specs, built_at)
        assert applier.covers(built_at)
        now = applier.valid_from + int(where * (applier.valid_until - applier.valid_from - 1))
        earlier, *_ = reference(None, specs, data.draw(batches(NOW)), NOW)
        events = data.draw(batches(now))

        got = applier.apply(earlier, events, now)

        record, *counts = reference(earlier, specs, events, now)
        same(got.record, record)
        assert [got.applied, got.skipped_duplicate, got.late, got.future] == counts
        assert not applier.covers(applier.valid_until)
        assert not applier.covers(applier.valid_from - 1)

    @PROPERTY
    @given(spec_sets(), spec_sets(), st.data())
    def test_applying_to_an_owned_record_in_place_gives_the_record_a_copy_would(
        self,
        before_specs: dict[str, list[FeatureSpec]],
        specs: dict[str, list[FeatureSpec]],
        data: st.DataObject,
    ) -> None:
        # A record written under some config a while ago (tiles to prune, features and
        # windows to drop, fingerprints to reset), as the writer decodes it.
        earlier = NOW - data.draw(st.integers(0, 2 * DAY))
        first, *_ = reference(None, before_specs, data.draw(batches(earlier)), earlier)
        if data.draw(st.booleans()):
            specs = before_specs
        events = data.draw(batches(NOW))
        owned = json.loads(json.dumps(first))

        got = BatchApplier(specs, NOW).apply(owned, events, NOW, owned=True)

        record, *counts = reference(first, specs, events, NOW)
        same(got.record, record)
        assert got.record is owned
        assert [got.applied, got.skipped_duplicate, got.late, got.future] == counts

    def test_a_time_outside_its_interval_is_refused(self) -> None:
        spec = FeatureSpec("f", Aggregation.COUNT, None, (parse_window("5m"),))
        applier = BatchApplier({"view": [spec]}, NOW)
        with pytest.raises(ValueError, match="outside"):
            applier.apply(None, [], applier.valid_until)
