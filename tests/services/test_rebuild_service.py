"""Rebuild from the archive on real Kafka, chDB and the SQLite online store: the
features equal the oracle after it, on an empty store (the data was lost) and on the
live store beside compute, whichever of the two (archive, compute) is ahead."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app.core.settings import BackendSettings
from app.db import factory
from app.db.clickhouse import ChdbSink
from app.db.online_store import OnlineStore
from app.schemas.deployment import AggregateFeatureSnapshot
from app.schemas.feature import FeatureFilter, FilterCondition
from app.services.rebuild_service import RebuildService
from app.tiles.entities import read_pairs
from app.tiles.record import serve
from runtime.archive.metrics import ArchiveMetrics
from runtime.archive.worker import ArchiveOptions, ArchiveWorker
from runtime.compute.specs import build_specs
from runtime.compute.worker import wall_clock_ms
from tests.conftest import unique
from tests.factories import new_id
from tests.runtime.compute.harness import ComputeKit, started_kit
from tests.runtime.compute.oracle import (
    RawEvent,
    all_aggregations,
    assert_same_values,
    config,
    feature,
    oracle_values,
    pipeline,
)
from tests.support.archive import chdb_archive, run_until_archived

pytestmark = [pytest.mark.kafka, pytest.mark.redis]

# Whole minutes of the wall clock: the archive drops events past its retention, so the
# events must be recent; the clock is fixed for the test (compute's and the rebuild's).
NOW = wall_clock_ms() // 60_000 * 60_000
WINDOWS = ["5m", "1h", "24h", "7d"]
MINUTE, DAY = 60_000, 86_400_000


def random_events(rng: random.Random, pipeline_id: str, count: int) -> list[RawEvent]:
    """Events over the last 8 days (some late for every window), most in the last hour."""
    out = []
    for _ in range(count):
        roll = rng.random()
        age = rng.randrange(0, 10 * MINUTE if roll < 0.4 else 2 * DAY if roll < 0.7 else 8 * DAY)
        properties: dict[str, object] = {"product_id": f"sku-{rng.randrange(12)}"}
        if rng.random() < 0.9:
            properties["price"] = rng.choice([rng.randrange(1, 100), rng.randrange(1, 9999) / 100])
        out.append(
            RawEvent(f"u{rng.randrange(30)}", pipeline_id, "add_to_cart", NOW - age, properties)
        )
    return out


def python_applied(pipeline_id: str, windows: list[str]) -> list[AggregateFeatureSnapshot]:
    """A filtered feature, LAST_N, TOP_K, RECENCY (aggregated in SQL as the others)."""
    pricey = FeatureFilter(all=[FilterCondition(field="price", op="gt", value=50)])
    return [
        feature("pricey", pipeline_id, "COUNT", windows).model_copy(update={"filter": pricey}),
        feature("recent", pipeline_id, "LAST", windows).model_copy(
            update={"aggregation": "LAST_N", "size": 3}
        ),
        feature("top", pipeline_id, "LAST", windows).model_copy(
            update={"aggregation": "TOP_K", "size": 2}
        ),
        feature("since", pipeline_id, "COUNT", windows).model_copy(
            update={"aggregation": "RECENCY"}
        ),
    ]


@pytest.fixture
async def kit(backend_settings: BackendSettings) -> AsyncIterator[ComputeKit]:
    async with started_kit(backend_settings, "sqlite", NOW) as k:
        yield k


@pytest.fixture
async def archive(backend_settings: BackendSettings) -> AsyncIterator[ChdbSink]:
    async with chdb_archive(backend_settings) as sink:
        yield sink


async def archive_all(kit: ComputeKit, archive: ChdbSink, group: str, total: int) -> None:
    """Runs an archive worker of `group` until it has inserted `total` records."""
    metrics = ArchiveMetrics()
    worker = ArchiveWorker(
        kit.consumer(group),
        archive,
        metrics=metrics,
        options=ArchiveOptions(max_batch_messages=200, poll_timeout_ms=100),
    )
    await run_until_archived(worker, metrics, total)


async def assert_oracle(
    store: OnlineStore, project: str, snapshot_features: list, events: list[RawEvent], specs: tuple
) -> None:
    for user in sorted({e.user_id for e in events}):
        stored = await store.get(project, user)
        got = serve(stored.record if stored else None, specs, NOW)
        mine = [e for e in events if e.user_id == user]
        assert_same_values(got, oracle_values(snapshot_features, mine, NOW))


class TestRebuild:
    async def test_features_equal_the_oracle_after_a_rebuild_whoever_is_ahead(
        self, kit: ComputeKit, archive: ChdbSink, tmp_path: Path
    ) -> None:
        rng = random.Random(12)
        project, pl = unique("proj"), new_id()
        features = all_aggregations(pl, WINDOWS)
        snapshot = config(project, 1, [pipeline(pl, "add_to_cart")], features)
        specs = build_specs(snapshot).specs
        await kit.publish(snapshot)
        group = unique("archive")

        # A: compute and archive both have it.
        a = random_events(rng, pl, 400)
        await kit.produce(project, a, 1)
        compute = kit.run()
        await compute.wait_processed(len(a))
        await compute.stop()
        # B: only the archive has it (compute is behind).
        b = random_events(rng, pl, 300)
        await kit.produce(project, b, 1)
        await archive_all(kit, archive, group, len(a) + len(b))

        # The online store lost everything: rebuilt into an empty one.
        lost = factory.make_online_store(
            kit.settings.model_copy(update={"data_dir": tmp_path / "empty"})
        )
        await lost.initialize()
        try:
            report = await RebuildService(archive, lost, now_ms=kit.clock).rebuild(snapshot)
            assert report.deferred == 0
            assert report.written == report.users == len({e.user_id for e in a + b})
            await assert_oracle(lost, project, features, a + b, specs)
        finally:
            await lost.close()

        # The live store, compute behind the archive: rebuilt, then compute reads B and
        # skips what the rebuild holds (by offset): nothing counts twice at the seam.
        report = await RebuildService(archive, kit.store, now_ms=kit.clock).rebuild(snapshot)
        assert report.deferred == 0
        compute = kit.run()
        await compute.wait_processed(len(b))
        await compute.stop()
        await assert_oracle(kit.store, project, features, a + b, specs)

        # C: compute ahead of the archive. Users with events only compute has are
        # deferred (their records stay compute's), the others are rebuilt.
        c = random_events(rng, pl, 60)
        await kit.produce(project, c, 1)
        compute = kit.run()
        await compute.wait_processed(len(c))
        await compute.stop()
        report = await RebuildService(archive, kit.store, now_ms=kit.clock).rebuild(snapshot)
        assert sorted(report.deferred_users) == sorted({e.user_id for e in c})
        await assert_oracle(kit.store, project, features, a + b + c, specs)
        # Once the archive caught up, nobody is deferred.
        await archive_all(kit, archive, group, len(c))
        report = await RebuildService(archive, kit.store, now_ms=kit.clock).rebuild(snapshot)
        assert report.deferred == 0
        await assert_oracle(kit.store, project, features, a + b + c, specs)

    async def test_a_second_copy_of_an_event_counts_once_after_a_rebuild(
        self, kit: ComputeKit, archive: ChdbSink
    ) -> None:
        # The rebuilt record remembers recent event ids: a copy of a rebuilt event that
        # reaches compute later (a producer retry) is dropped by the id layer.
        rng = random.Random(5)
        project, pl = unique("proj"), new_id()
        features = all_aggregations(pl, ["1h"])
        snapshot = config(project, 1, [pipeline(pl, "add_to_cart")], features)
        await kit.publish(snapshot)
        events = [
            RawEvent(f"u{n % 3}", pl, "add_to_cart", NOW - rng.randrange(30 * MINUTE), {"price": n})
            for n in range(30)
        ]
        await kit.produce(project, events, 1)
        await archive_all(kit, archive, unique("archive"), len(events))
        await RebuildService(archive, kit.store, now_ms=kit.clock).rebuild(snapshot)
        # The same event ids again (the kit numbers events from 1 in production order).
        kit._sent = 0
        await kit.produce(project, events, 1)
        compute = kit.run()
        await compute.wait_processed(2 * len(events))
        await compute.stop()
        await assert_oracle(kit.store, project, features, events, build_specs(snapshot).specs)

    async def test_filtered_last_n_top_k_and_recency_features_equal_computes_after_a_rebuild(
        self, kit: ComputeKit, archive: ChdbSink, tmp_path: Path
    ) -> None:
        rng = random.Random(9)
        project, pl = unique("proj"), new_id()
        features = [*all_aggregations(pl, ["1h", "24h"]), *python_applied(pl, ["1h", "24h"])]
        snapshot = config(project, 1, [pipeline(pl, "add_to_cart")], features)
        specs = build_specs(snapshot).specs
        await kit.publish(snapshot)
        events = random_events(rng, pl, 300)
        await kit.produce(project, events, 1)
        compute = kit.run()
        await compute.wait_processed(len(events))
        await compute.stop()
        await archive_all(kit, archive, unique("archive"), len(events))
        lost = factory.make_online_store(
            kit.settings.model_copy(update={"data_dir": tmp_path / "empty"})
        )
        await lost.initialize()
        try:
            await RebuildService(archive, lost, now_ms=kit.clock).rebuild(snapshot)
            for user in sorted({e.user_id for e in events}):
                live, rebuilt = await kit.store.get(project, user), await lost.get(project, user)
                assert live is not None
                assert rebuilt is not None
                assert_same_values(
                    serve(rebuilt.record, specs, NOW), serve(live.record, specs, NOW)
                )
        finally:
            await lost.close()

    async def test_tiles_past_their_exact_limits_are_rebuilt_as_compute_holds_them(
        self, kit: ComputeKit, archive: ChdbSink, tmp_path: Path
    ) -> None:
        # One minute of 700 events over 300 products: the 1h window's tile passes
        # COUNT_DISTINCT's 64 exact values (an HLL sketch, whose estimate depends on the
        # order values came in) and TOP_K's 256 counters (a Misra-Gries summary, which
        # depends on every event's order): both must be compute's own tiles.
        rng = random.Random(11)
        project, pl = unique("proj"), new_id()
        features = [
            feature("distinct", pl, "COUNT_DISTINCT", ["1h"]),
            feature("top", pl, "LAST", ["1h"]).model_copy(
                update={"aggregation": "TOP_K", "size": 3}
            ),
        ]
        snapshot = config(project, 1, [pipeline(pl, "add_to_cart")], features)
        specs = build_specs(snapshot).specs
        await kit.publish(snapshot)
        minute = NOW - 10 * MINUTE
        products = [n if n < 300 else rng.choice([1, 2, 3, rng.randrange(300)]) for n in range(700)]
        events = [
            RawEvent("big", pl, "add_to_cart", minute + n * 80, {"product_id": f"sku-{p}"})
            for n, p in enumerate(products)
        ]
        await kit.produce(project, events, 1)
        compute = kit.run()
        await compute.wait_processed(len(events))
        await compute.stop()
        await archive_all(kit, archive, unique("archive"), len(events))
        lost = factory.make_online_store(
            kit.settings.model_copy(update={"data_dir": tmp_path / "empty"})
        )
        await lost.initialize()
        try:
            await RebuildService(archive, lost, now_ms=kit.clock).rebuild(snapshot)
            live, rebuilt = await kit.store.get(project, "big"), await lost.get(project, "big")
            assert live is not None
            assert rebuilt is not None
            tiles = live.record["features"]["distinct"]["w"]["1h"]
            assert any(isinstance(p, str) for p in tiles.values())  # a sketch
            top = live.record["features"]["top"]["w"]["1h"]
            assert any(len(p) < 300 for p in top.values())  # counters decremented
            assert rebuilt.record["features"] == live.record["features"]
            assert serve(rebuilt.record, specs, NOW) == serve(live.record, specs, NOW)
        finally:
            await lost.close()


class TestEntityFeaturesAndRebuild:
    async def test_user_x_entity_state_survives_a_rebuild_and_entity_only_projects_are_left_alone(
        self, kit: ComputeKit, archive: ChdbSink
    ) -> None:
        # Rebuild recomputes per-user features only; the user x entity state compute wrote
        # stays in the rebuilt record (its offsets cover those events, so dropping the
        # state would lose them for good).
        project, pl = unique("proj"), new_id()
        keyed = pipeline(pl, "add_to_cart")
        event = keyed.events[0]
        fields = [f.model_copy(update={"entity": "product"}) if f.name == "product_id" else f
                  for f in event.fields]  # fmt: skip
        keyed = keyed.model_copy(update={"events": [event.model_copy(update={"fields": fields})]})
        per_pair = feature("spend_by_product", pl, "SUM", ["1h"]).model_copy(
            update={"entity": ["user", "product"]}
        )
        snapshot = config(project, 1, [keyed], [feature("n", pl, "COUNT", ["1h"]), per_pair])
        await kit.publish(snapshot)
        events = [
            RawEvent(f"u{n % 2}", pl, "add_to_cart", NOW - n * MINUTE,
                     {"product_id": f"sku-{n % 3}", "price": n})
            for n in range(12)
        ]  # fmt: skip
        await kit.produce(project, events, 1)
        compute = kit.run()
        await compute.wait_processed(len(events))
        await compute.stop()
        await archive_all(kit, archive, unique("archive"), len(events))
        before = {u: await kit.store.get(project, u) for u in ("u0", "u1")}
        report = await RebuildService(archive, kit.store, now_ms=kit.clock).rebuild(snapshot)
        assert report.written == 2
        for user, stored in before.items():
            after = await kit.store.get(project, user)
            assert stored is not None
            assert after is not None
            assert after.record["pairs"] == stored.record["pairs"]
            mine = [e for e in events if e.user_id == user]
            want: dict[str, float] = {}
            for e in mine:
                key = str(e.properties["product_id"])
                want[key] = want.get(key, 0) + float(e.properties["price"])
            spec = build_specs(snapshot).pairs[0]
            assert read_pairs(after.record["pairs"], spec, NOW) == {"spend_by_product_1h": want}

        only_entities = config(unique("proj"), 1, [keyed], [
            feature("buys", pl, "COUNT", ["1h"]).model_copy(update={"entity": "product"})
        ])  # fmt: skip
        report = await RebuildService(archive, kit.store, now_ms=kit.clock).rebuild(only_entities)
        assert report.written == 0
