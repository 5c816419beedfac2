"""A backfilled feature's staged copy in a record: served until compute moves it to the
feature's name, moved on compute's next write, and never served before it is live."""

from __future__ import annotations

import dataclasses
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from app.tiles.aggregations import Aggregation
from app.tiles.features import FeatureSpec
from app.tiles.merge import Merger
from app.tiles.record import AppliedEvent, BatchApplier, apply_batch, serve
from app.tiles.staging import STAGED_MARK, staged_name
from app.tiles.windows import parse_window

NOW = 1_767_225_600_000
OLD = FeatureSpec(
    name="spend", aggregation=Aggregation.SUM, field="price", windows=(parse_window("1h"),)
)
NEW = FeatureSpec(
    name="spend",
    aggregation=Aggregation.MAX,
    field="price",
    windows=(parse_window("1h"), parse_window("7d")),
)
STAGED = dataclasses.replace(NEW, name=staged_name(NEW.name, NEW.fingerprint))


def events(prices: list[int], first_offset: int) -> list[AppliedEvent]:
    return [
        AppliedEvent(
            0,
            first_offset + i,
            "cart",
            NOW - 60_000 * (i + 1),
            {"price": p},
            f"e{first_offset + i}",
        )
        for i, p in enumerate(prices)
    ]


prices = st.lists(st.integers(min_value=1, max_value=1000), min_size=1, max_size=20)


class TestStagedCopies:
    def test_a_staged_name_cannot_be_a_feature_name_and_depends_on_the_fingerprint(self) -> None:
        assert STAGED_MARK in STAGED.name
        assert staged_name("spend", OLD.fingerprint) != STAGED.name

    @settings(max_examples=50, deadline=None)
    @given(before=prices, during=prices, after=prices)
    def test_the_live_version_serves_the_old_state_and_the_new_one_the_staged_state(
        self, before: list[int], during: list[int], after: list[int]
    ) -> None:
        # While backfilling compute runs the old definition and the staged new one.
        record = apply_batch(None, {"cart": (OLD,)}, events(before, 0), NOW).record
        union = {"cart": (OLD, STAGED)}
        record = apply_batch(record, union, events(during, 100), NOW).record
        every = before + during
        old_values = serve(record, [OLD], NOW)
        assert old_values == {"spend_1h": float(sum(every))}
        assert Merger([OLD], NOW)(record) == old_values
        # Once live, the new definition is read from the staged copy (only `during`
        # reached it here: the backfill adds the rest), by both readers.
        new_values = serve(record, [NEW], NOW)
        assert new_values == {"spend_1h": float(max(during)), "spend_7d": float(max(during))}
        assert Merger([NEW], NOW)(record) == new_values
        # Compute's next write under the new version moves it to the feature's name.
        moved = apply_batch(record, {"cart": (NEW,)}, events(after, 200), NOW).record
        assert not [k for k in moved["features"] if STAGED_MARK in k]
        assert moved["features"]["spend"]["fp"] == NEW.fingerprint
        top = float(max(during + after))
        assert serve(moved, [NEW], NOW) == {"spend_1h": top, "spend_7d": top}

    def test_a_staged_copy_wins_over_an_entry_of_the_same_fingerprint(self) -> None:
        # A new feature whose name an idle record still holds from long ago: the staged
        # copy (archive plus stream) is the one to keep.
        stale = apply_batch(None, {"cart": (NEW,)}, events([5], 0), NOW).record
        filled = apply_batch(None, {"cart": (STAGED,)}, events([7, 9], 10), NOW).record
        record = {**stale, "features": {**stale["features"], **filled["features"]}}
        moved = apply_batch(record, {"cart": (NEW,)}, [], NOW).record
        assert serve(moved, [NEW], NOW) == {"spend_1h": 9.0, "spend_7d": 9.0}
        assert list(moved["features"]) == ["spend"]

    @settings(max_examples=30, deadline=None)
    @given(during=prices, after=prices)
    def test_a_record_handed_over_to_be_updated_in_place_still_moves_its_staged_copy(
        self, during: list[int], after: list[int]
    ) -> None:
        # Compute's writer hands the record it just read over (`owned`): the staged copy
        # must become the feature as it does for a copied record, not be dropped.
        record = apply_batch(None, {"cart": (OLD, STAGED)}, events(during, 100), NOW).record
        copied = apply_batch(record, {"cart": (NEW,)}, events(after, 200), NOW).record
        applier = BatchApplier({"cart": (NEW,)}, NOW)
        moved = applier.apply(json.loads(json.dumps(record)), events(after, 200), NOW, owned=True)
        assert moved.record == copied
        top = float(max(during + after))
        assert serve(moved.record, [NEW], NOW) == {"spend_1h": top, "spend_7d": top}

    def test_staged_features_are_not_in_the_old_versions_answer(self) -> None:
        record = apply_batch(None, {"cart": (OLD, STAGED)}, events([3], 0), NOW).record
        assert sorted(serve(record, [OLD], NOW)) == ["spend_1h"]
