"""Per-entity and per user x entity features against a brute-force oracle: a log of two
partitions, read in random batches in a random interleaving (two workers), with second
copies of event ids and batches replayed after a crash between the entity writes and
the user writes. Pure code: no server (the store round trips are in the contract suite,
the processes in tests/faults)."""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.tiles.aggregations import Aggregation
from app.tiles.entities import (
    PairApplier,
    entity_id_text,
    group_by_entity,
    read_pairs,
    store_id,
)
from app.tiles.features import FeatureSpec
from app.tiles.merge import Merger
from app.tiles.record import AppliedEvent, BatchApplier, serve
from app.tiles.windows import parse_window

NOW = 1_767_225_600_000
MINUTE = 60_000
DAY = [parse_window("1d")]
HOUR = [parse_window("1h")]
# Per product: purchases and revenue. Per user x category: spend, and a count.
PRODUCT_COUNT = FeatureSpec("buys", Aggregation.COUNT, None, (*DAY,))
PRODUCT_SUM = FeatureSpec("revenue", Aggregation.SUM, "price", (*DAY,))
PAIR_SUM = FeatureSpec("spend", Aggregation.SUM, "price", (*DAY, *HOUR), key="category")
PAIR_COUNT = FeatureSpec("orders", Aggregation.COUNT, None, (*DAY,), key="category")
ENTITY_BY_EVENT = {"order": (PRODUCT_COUNT, PRODUCT_SUM)}
PAIRS_BY_EVENT = {"order": (PAIR_SUM, PAIR_COUNT)}
KEY_BY_EVENT = {"order": "product_id"}

Event = tuple[str, Any, str, float, int]  # user, product id, category, price, minutes ago


def partition_of(user: str) -> int:
    return sum(map(ord, user)) % 2


class Platform:
    """The compute path, in memory: user records (with pairs) and product records."""

    def __init__(self, max_keys: int = 100) -> None:
        self.users: dict[str, dict[str, Any]] = {}
        self.products: dict[str, dict[str, Any]] = {}
        self.user_applier = BatchApplier({}, NOW, keyed_events=frozenset({"order"}))
        self.pairs = PairApplier(PAIRS_BY_EVENT, NOW, max_keys=max_keys)
        self.entities = BatchApplier(ENTITY_BY_EVENT, NOW)
        self.dropped = 0

    def batch(self, events: list[AppliedEvent], *, crash: bool) -> None:
        """One worker's batch: users applied, entity records written, then (unless it
        crashes first) the user records."""
        by_user: dict[str, list[AppliedEvent]] = defaultdict(list)
        for event in events:
            by_user[event.properties["user"]].append(event)
        new_users: dict[str, dict[str, Any]] = {}
        fresh: list[AppliedEvent] = []
        for user, mine in by_user.items():
            result = self.user_applier.apply(self.users.get(user), mine, NOW)
            new = [mine[i] for i in result.fresh]
            pairs = self.pairs.apply(result.record.get("pairs"), new, NOW)
            self.dropped += pairs.dropped
            result.record["pairs"] = pairs.pairs
            new_users[user] = result.record
            fresh += new
        for product, group in group_by_entity(fresh, KEY_BY_EVENT).items():
            key = store_id(product)
            self.products[key] = self.entities.apply(self.products.get(key), group, NOW).record
        if not crash:
            self.users.update(new_users)


def log_of(events: list[Event], copies: list[int]) -> dict[int, list[AppliedEvent]]:
    """Returns each partition's log: the events, then second copies of `copies`."""
    logs: dict[int, list[AppliedEvent]] = {0: [], 1: []}
    ordered = [(i, e) for i, e in enumerate(events)] + [
        (i % len(events), events[i % len(events)]) for i in copies
    ]
    for i, (user, product, category, price, ago) in ordered:
        partition = partition_of(user)
        props = {"user": user, "product_id": product, "category": category, "price": price}
        offset = len(logs[partition])
        t_ms = NOW - ago * MINUTE
        logs[partition].append(AppliedEvent(partition, offset, "order", t_ms, props, f"e{i}"))
    return logs


events_st = st.lists(
    st.tuples(
        st.sampled_from(["u1", "u2", "u3", "u4", "u5"]),
        st.sampled_from(["sku-1", "$where", "../x", 42, "hot"]),
        st.sampled_from(["shoes", "hats", "a:b"]),
        st.sampled_from([1.0, 2.5, 10.0]),
        # Clear of the hour's edge, which may read one extra tile (windows.py).
        st.one_of(st.integers(0, 55), st.integers(65, 120)),
    ),
    min_size=1,
    max_size=40,
)


class TestAgainstTheOracle:
    @settings(
        max_examples=150, deadline=None, suppress_health_check=[HealthCheck.large_base_example]
    )
    @given(events=events_st, copies=st.lists(st.integers(0, 100), max_size=10), seed=st.randoms())
    def test_entity_and_pair_features_count_each_event_id_once(
        self, events: list[Event], copies: list[int], seed: random.Random
    ) -> None:
        logs = log_of(events, copies)
        platform = Platform()
        # Two workers, one partition each, in a random interleaving of random batches;
        # a crashed batch is redelivered from its first event.
        positions = {0: 0, 1: 0}
        while any(positions[p] < len(logs[p]) for p in logs):
            partition = seed.choice([p for p in logs if positions[p] < len(logs[p])])
            start = positions[partition]
            end = min(len(logs[partition]), start + seed.randint(1, 8))
            crash = seed.random() < 0.2
            platform.batch(logs[partition][start:end], crash=crash)
            if not crash:
                positions[partition] = end

        # The oracle: every event id once, all inside the day; the hour for spend_1h.
        products: dict[str, list[float]] = defaultdict(list)
        pairs: dict[tuple[str, str], list[tuple[float, int]]] = defaultdict(list)
        for user, product, category, price, ago in events:
            products[str(product)].append(price)
            pairs[(user, category)].append((price, ago))
        for product, prices in products.items():
            got = serve(platform.products[store_id(product)], [PRODUCT_COUNT, PRODUCT_SUM], NOW)
            assert got == {"buys_1d": len(prices), "revenue_1d": sum(prices)}
        assert set(platform.products) == {store_id(p) for p in products}

        merger = Merger([PAIR_SUM, PAIR_COUNT], NOW)
        for user in {u for u, *_ in events}:
            record = platform.users[user]
            want_day = {c: [p for p, _ in v] for (u, c), v in pairs.items() if u == user}
            want_hour = {
                c: [p for p, ago in v if ago <= 59] for (u, c), v in pairs.items() if u == user
            }
            expected = {
                "spend_1d": {c: sum(v) for c, v in want_day.items()},
                "spend_1h": {c: sum(v) for c, v in want_hour.items() if v},
                "orders_1d": {c: len(v) for c, v in want_day.items()},
            }
            reference = {
                **read_pairs(record["pairs"], PAIR_SUM, NOW),
                **read_pairs(record["pairs"], PAIR_COUNT, NOW),
            }
            assert reference == expected
            assert merger(record) == expected


class TestPairKeyCap:
    def test_past_the_cap_the_key_values_with_the_oldest_events_are_dropped_and_counted(
        self,
    ) -> None:
        platform = Platform(max_keys=2)
        events = [
            AppliedEvent(0, i, "order", NOW - (10 - i) * MINUTE,
                         {"user": "u1", "product_id": "p", "category": c, "price": 1.0}, f"e{i}")
            for i, c in enumerate(["old", "mid", "new", "newest"])
        ]  # fmt: skip
        platform.batch(events[:3], crash=False)
        assert platform.dropped == 2  # one key value of each of the two pair features
        platform.batch(events[3:], crash=False)
        assert platform.dropped == 4
        kept = read_pairs(platform.users["u1"]["pairs"], PAIR_COUNT, NOW)["orders_1d"]
        assert kept == {"new": 1, "newest": 1}


class TestEntityIds:
    def test_store_ids_keep_safe_text_and_encode_everything_else_injectively(self) -> None:
        assert store_id("sku-1_A") == "sku-1_A"
        assert store_id("$where") == "%24where"
        assert store_id("../x") == "%2E%2E%2Fx"
        assert store_id("%24where") == "%2524where"
        assert store_id("é") == "%C3%A9"

    @given(st.text(min_size=1, max_size=20), st.text(min_size=1, max_size=20))
    def test_two_ids_never_share_a_store_key(self, a: str, b: str) -> None:
        assert (store_id(a) == store_id(b)) == (a == b)
        assert set(store_id(a)) <= set(
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-%"
        )

    def test_property_values_name_ids_by_text_or_decimal_integer(self) -> None:
        assert [entity_id_text(v) for v in ("a", 42, "", None, 1.5, True)] == [
            "a", "42", None, None, None, None
        ]  # fmt: skip


class TestPairFreshness:
    def test_the_newest_event_counted_is_reported_for_the_records_freshness(self) -> None:
        events = [
            AppliedEvent(0, i, "order", NOW - ago * MINUTE,
                         {"product_id": "p", "category": "c", "price": 1.0}, None)
            for i, ago in enumerate([30, 3, 90])
        ]  # fmt: skip
        result = PairApplier(PAIRS_BY_EVENT, NOW).apply(None, events, NOW)
        assert result.newest_ms == NOW - 3 * MINUTE
        assert PairApplier(PAIRS_BY_EVENT, NOW).apply(None, [], NOW).newest_ms == 0
