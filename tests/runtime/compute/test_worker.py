"""The compute worker on real Kafka and Redis (config loader), SQLite online store:
stored records equal the brute-force oracle, deploys apply without restart, offsets are
committed only after the writes, and nothing is skipped or counted twice."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest

from app.core.consumer_loop import wall_clock_ms
from app.core.settings import BackendSettings
from app.db.event_log import LogRecord
from app.db.kafka import DEFAULT_PARTITIONS
from app.db.online_store import OnlineStore
from app.schemas.deployment import ConfigSnapshot
from app.tiles.record import AppliedEvent, apply_batch, serve
from app.tiles.windows import parse_window
from runtime.compute.specs import ProjectSpecs, build_specs, event_key
from runtime.compute.worker import WorkerOptions
from tests.conftest import unique
from tests.factories import new_id
from tests.runtime.compute.harness import CATCH_UP_BOUND_S, ComputeKit, Running, sample
from tests.runtime.compute.oracle import (
    RawEvent,
    all_aggregations,
    assert_same_values,
    config,
    feature,
    oracle_values,
    pipeline,
)
from tests.support.online import DelegatingStore

pytestmark = [pytest.mark.kafka, pytest.mark.redis]


def sample_labelled(metrics: Any, name: str, project_id: str) -> float:
    value = metrics.registry.get_sample_value(name, {"project_id": project_id})
    assert value is not None, f"no {name} for {project_id}"
    return float(value)


NOW = 1_767_225_600_000  # 2026-01-01T00:00:00Z: the worker's clock in these tests
WINDOWS = ["5m", "1h", "24h", "7d"]
MINUTE = 60_000
DAY = 86_400_000


@pytest.fixture
async def kit(backend_settings: BackendSettings) -> AsyncIterator[ComputeKit]:
    k = ComputeKit(backend_settings.model_copy(update={"online_store": "sqlite"}), NOW)
    await k.start()
    try:
        yield k
    finally:
        await k.close()


def random_events(
    rng: random.Random, users: list[str], pipeline_id: str, count: int, event: str = "add_to_cart"
) -> list[RawEvent]:
    """Events spread so every window has some: many in the last minutes, some over days,
    a few older than the longest window (late)."""
    out = []
    for _ in range(count):
        roll = rng.random()
        if roll < 0.4:
            age = rng.randrange(0, 10 * MINUTE)
        elif roll < 0.7:
            age = rng.randrange(0, 2 * DAY)
        else:
            age = rng.randrange(0, 8 * DAY)
        properties: dict[str, Any] = {"product_id": f"sku-{rng.randrange(12)}"}
        if rng.random() < 0.9:
            properties["price"] = rng.choice(
                [rng.randrange(1, 100), rng.randrange(100, 10_000) / 100]
            )
        out.append(RawEvent(rng.choice(users), pipeline_id, event, NOW - age, properties))
    return out


def carts(
    rng: random.Random,
    pipeline_id: str,
    count: int,
    *,
    users: int,
    within_ms: int,
    prices: int,
    skus: int,
) -> list[RawEvent]:
    """`count` add_to_cart events of users u0..u<users-1> within the last `within_ms`,
    priced 1..prices-1, of products s0..s<skus-1>."""
    return [
        RawEvent(
            f"u{rng.randrange(users)}",
            pipeline_id,
            "add_to_cart",
            NOW - rng.randrange(within_ms),
            {"price": rng.randrange(1, prices), "product_id": f"s{rng.randrange(skus)}"},
        )
        for _ in range(count)
    ]


def expected_record(specs: ProjectSpecs, events: list[RawEvent]) -> dict[str, Any]:
    """The record one apply of all a user's events at NOW produces (the tile state)."""
    applied = [
        AppliedEvent(0, i, event_key(e.pipeline_id, e.event), e.t_ms, e.properties)
        for i, e in enumerate(events)
    ]
    return apply_batch(None, specs.by_event, applied, NOW).record


def late_count(events: list[RawEvent], longest: str) -> int:
    window = parse_window(longest)
    lo = window.tile_range(NOW)[0]
    return sum(1 for e in events if window.tile_of(e.t_ms) < lo)


def of_user(events: list[RawEvent], user: str) -> list[RawEvent]:
    return [e for e in events if e.user_id == user]


class TestStoredRecordsEqualTheOracle:
    async def test_every_aggregation_and_window_matches_the_oracle_and_the_tile_state(
        self, kit: ComputeKit
    ):
        project, p = unique("shop"), new_id()
        features = all_aggregations(p, WINDOWS)
        snapshot = config(project, 1, [pipeline(p, "add_to_cart", "page_view")], features)
        await kit.publish(snapshot)
        rng = random.Random(6)
        users = [f"u{i}" for i in range(5)]
        events = random_events(rng, users, p, 400)
        # An event no feature uses still advances the record (and counts as applied).
        events += [RawEvent(u, p, "page_view", NOW - MINUTE) for u in users]
        await kit.produce(project, events, version=1)

        running = kit.run()
        await running.wait_processed(len(events))
        await running.stop()

        specs = build_specs(snapshot)
        for user in users:
            stored = await kit.store.get(project, user)
            assert stored is not None
            mine = of_user(events, user)
            assert_same_values(
                serve(stored.record, specs.specs, NOW), oracle_values(features, mine, NOW)
            )
            assert stored.record["features"] == expected_record(specs, mine)["features"]
        late = late_count(events, "7d")
        assert late > 0
        assert sample(running.metrics, "compute_events_late_total") == late
        assert sample(running.metrics, "compute_events_applied_total") == len(events) - late
        assert sample(running.metrics, "compute_events_duplicate_total") == 0

    async def test_offsets_are_committed_past_every_record_of_the_batch(self, kit: ComputeKit):
        project, p = unique("shop"), new_id()
        await kit.publish(
            config(project, 1, [pipeline(p, "add_to_cart")], [feature("n", p, "COUNT", ["1h"])])
        )
        events = [RawEvent(f"u{i % 7}", p, "add_to_cart", NOW - i) for i in range(60)]
        await kit.produce(project, events, version=1)

        running = kit.run()
        await running.wait_processed(len(events))
        await running.stop()

        assert sum((await kit.committed()).values()) == len(events)


class TestCatchUpBatches:
    """Under lag a batch takes more than one fetch while it holds few users, so a
    user's record is read and written once for many of its events."""

    @staticmethod
    async def backlog(kit: ComputeKit, users: int, events: int) -> tuple[Running, ConfigSnapshot]:
        """Produces `events` add-to-carts spread over `users` users, then runs a worker
        of 100-message fetches over them; returns it (stopped) and the config."""
        project, p = unique("shop"), new_id()
        snapshot = config(
            project, 1, [pipeline(p, "add_to_cart")], [feature("n", p, "COUNT", ["1h"])]
        )
        await kit.publish(snapshot)
        raws = [RawEvent(f"u{i % users}", p, "add_to_cart", NOW - i) for i in range(events)]
        await kit.produce(project, raws, version=1)
        running = kit.run(options=WorkerOptions(max_batch_messages=100, retry_first_s=0.05))
        await running.wait_processed(events)
        await running.stop()
        assert sum((await kit.committed()).values()) == events
        return running, snapshot

    async def test_a_backlog_of_few_users_is_stored_in_fewer_batches_than_fetches(
        self, kit: ComputeKit
    ):
        running, snapshot = await self.backlog(kit, users=3, events=1_200)

        # One fetch takes at most 100 records: 12 batches without catching up.
        assert running.worker.state.batches_committed < 12
        specs = build_specs(snapshot)
        project = snapshot.project_id
        for user in ("u0", "u1", "u2"):
            stored = await kit.store.get(project, user)
            assert stored is not None
            assert serve(stored.record, specs.specs, NOW) == {"n_1h": 400}

    async def test_a_backlog_of_many_users_keeps_batches_of_about_the_usual_users(
        self, kit: ComputeKit
    ):
        running, _ = await self.backlog(kit, users=600, events=600)

        # A batch stops growing at 100 users, plus at most one extra fetch of 25.
        assert running.worker.state.batches_committed >= 600 // 125


class TestLagMetric:
    async def test_lag_per_partition_is_exported_and_reaches_zero_once_caught_up(
        self, kit: ComputeKit
    ):
        project, p = unique("shop"), new_id()
        await kit.publish(
            config(project, 1, [pipeline(p, "add_to_cart")], [feature("n", p, "COUNT", ["1h"])])
        )
        events = [RawEvent(f"u{i}", p, "add_to_cart", NOW - i) for i in range(40)]
        await kit.produce(project, events, version=1)

        running = kit.run()
        await running.wait_processed(len(events))

        def lag_series() -> dict[str, float]:
            return {
                s.labels["partition"]: s.value
                for family in running.metrics.registry.collect()
                if family.name == "compute_consumer_lag"
                for s in family.samples
            }

        await running.wait_for(lambda: bool(lag_series()) and sum(lag_series().values()) == 0)
        await running.stop()
        # The only member of its group holds every partition of the topic.
        assert set(lag_series()) == {str(i) for i in range(DEFAULT_PARTITIONS)}

    async def test_each_project_has_its_delay_from_receipt_to_store(self, kit: ComputeKit):
        # Messages here were "received" at their event time, NOW - i (2026-01-01), so the
        # delay of each project's last batch is at least the wall clock's distance to NOW.
        slow, fast, p = unique("shop"), unique("shop"), new_id()
        for project in (slow, fast):
            await kit.publish(
                config(project, 1, [pipeline(p, "add_to_cart")], [feature("n", p, "COUNT", ["1h"])])
            )
        await kit.produce(slow, [RawEvent("u1", p, "add_to_cart", NOW - DAY)], version=1)
        await kit.produce(fast, [RawEvent("u1", p, "add_to_cart", NOW)], version=1)
        started_ms = wall_clock_ms()

        running = kit.run()
        await running.wait_processed(2)
        await running.stop()

        def delay(project: str) -> float:
            return sample_labelled(running.metrics, "compute_project_delay_seconds", project)

        assert delay(fast) >= (started_ms - NOW) / 1000
        assert delay(slow) >= delay(fast) + DAY / 1000 - 60  # same batch or the next


class TestDeployWithoutRestart:
    async def test_a_deploy_that_changes_adds_and_removes_features_applies_from_the_next_batch(
        self, kit: ComputeKit
    ):
        project, p = unique("shop"), new_id()
        kept = feature("kept", p, "COUNT", ["1h"])
        changed_v1 = feature("changed", p, "COUNT", ["1h"])
        removed = feature("removed", p, "COUNT", ["1h"])
        pipes = [pipeline(p, "add_to_cart")]
        await kit.publish(config(project, 1, pipes, [kept, changed_v1, removed]))
        rng = random.Random(7)
        before = carts(rng, p, 40, users=3, within_ms=30 * MINUTE, prices=50, skus=5)
        await kit.produce(project, before, version=1)
        running = kit.run()
        await running.wait_processed(len(before))

        changed_v2 = feature("changed", p, "SUM", ["1h"])
        added = feature("added", p, "COUNT_DISTINCT", ["1h"])
        snapshot_v2 = config(project, 2, pipes, [kept, changed_v2, added])
        await kit.publish(snapshot_v2)
        after = carts(rng, p, 40, users=3, within_ms=30 * MINUTE, prices=50, skus=5)
        await kit.produce(project, after, version=2)
        await running.wait_processed(len(before) + len(after))
        await running.stop()

        specs = build_specs(snapshot_v2)
        for user in ("u0", "u1", "u2"):
            stored = await kit.store.get(project, user)
            assert stored is not None
            got = serve(stored.record, specs.specs, NOW)
            want = oracle_values([kept], of_user(before + after, user), NOW)
            want |= oracle_values([changed_v2, added], of_user(after, user), NOW)
            assert_same_values(got, want)
            assert "removed" not in stored.record["features"]


class _Crash(BaseException):
    """Stands for the process dying: not an Exception, so nothing in the worker catches it."""


class TestExactlyOnceEffect:
    async def test_a_crash_between_the_write_and_the_commit_does_not_count_twice(
        self, kit: ComputeKit
    ):
        project, p = unique("shop"), new_id()
        features = all_aggregations(p, ["5m", "1h"])
        await kit.publish(config(project, 1, [pipeline(p, "add_to_cart")], features))
        rng = random.Random(8)
        events = carts(rng, p, 120, users=4, within_ms=50 * MINUTE, prices=9, skus=9)
        await kit.produce(project, events, version=1)

        consumer = kit.consumer()
        crash_at_commit = _CrashingCommit(consumer)
        first = kit.run(consumer=crash_at_commit)  # type: ignore[arg-type]
        with pytest.raises(_Crash):
            await first.task
        written = sample(first.metrics, "compute_store_write_seconds_count")
        assert written > 0
        assert await kit.committed() == {}

        second = kit.run()
        await second.wait_processed(len(events))
        await second.stop()

        assert sample(second.metrics, "compute_events_duplicate_total") > 0
        for user in ("u0", "u1", "u2", "u3"):
            stored = await kit.store.get(project, user)
            assert stored is not None
            assert_same_values(
                serve(
                    stored.record,
                    build_specs(config(project, 1, [pipeline(p, "add_to_cart")], features)).specs,
                    NOW,
                ),
                oracle_values(features, of_user(events, user), NOW),
            )

    async def test_a_failing_store_is_retried_and_nothing_is_committed_meanwhile(
        self, kit: ComputeKit
    ):
        project, p = unique("shop"), new_id()
        features = [feature("n", p, "COUNT", ["1h"]), feature("s", p, "SUM", ["1h"])]
        snapshot = config(project, 1, [pipeline(p, "add_to_cart")], features)
        await kit.publish(snapshot)
        events = [
            RawEvent(f"u{i % 5}", p, "add_to_cart", NOW - i * 1000, {"price": i}) for i in range(50)
        ]
        await kit.produce(project, events, version=1)
        store = _Outage(kit.store)

        running = kit.run(store=store)
        await running.wait_for(lambda: sample(running.metrics, "compute_batch_retries_total") >= 3)
        assert await kit.committed() == {}
        assert running.worker.state.retrying
        store.down = False
        await running.wait_processed(len(events))
        await running.stop()

        assert sum((await kit.committed()).values()) == len(events)
        specs = build_specs(snapshot)
        for user in (f"u{i}" for i in range(5)):
            stored = await kit.store.get(project, user)
            assert stored is not None
            got = serve(stored.record, specs.specs, NOW)
            assert_same_values(got, oracle_values(features, of_user(events, user), NOW))


class TestSkippedRecords:
    async def test_records_that_are_not_event_messages_are_counted_skipped_and_committed_past(
        self, kit: ComputeKit
    ):
        project, p = unique("shop"), new_id()
        await kit.publish(
            config(project, 1, [pipeline(p, "add_to_cart")], [feature("n", p, "COUNT", ["1h"])])
        )
        await kit.produce_raw(f"{project}:u1".encode(), b"{not an event")
        await kit.produce(project, [RawEvent("u1", p, "add_to_cart", NOW - 5)], version=1)

        running = kit.run()
        await running.wait_processed(2)
        await running.stop()

        assert sample(running.metrics, "compute_decode_errors_total") == 1
        assert sample(running.metrics, "compute_events_applied_total") == 1
        assert sum((await kit.committed()).values()) == 2

    async def test_events_of_a_project_without_a_deployed_config_are_counted_as_no_config(
        self, kit: ComputeKit
    ):
        project, p = unique("shop"), new_id()
        await kit.produce(project, [RawEvent("u1", p, "add_to_cart", NOW - 5)] * 3, version=1)

        running = kit.run()
        await running.wait_processed(3)
        await running.stop()

        assert sample(running.metrics, "compute_events_no_config_total") == 3
        assert await kit.store.get(project, "u1") is None
        assert sum((await kit.committed()).values()) == 3


class TestGracefulStop:
    async def test_stop_during_a_batch_stores_and_commits_it_before_leaving(self, kit: ComputeKit):
        project, p = unique("shop"), new_id()
        features = [feature("n", p, "COUNT", ["1h"])]
        snapshot = config(project, 1, [pipeline(p, "add_to_cart")], features)
        await kit.publish(snapshot)
        events = [RawEvent(f"u{i % 4}", p, "add_to_cart", NOW - i) for i in range(30)]
        await kit.produce(project, events, version=1)
        consumer = _StopAfterFetch(kit.consumer())

        running = kit.run(consumer=consumer)  # type: ignore[arg-type]
        consumer.worker = running.worker
        async with asyncio.timeout(CATCH_UP_BOUND_S):
            await running.task

        fetched = consumer.fetched
        assert 0 < fetched <= len(events)
        assert sum((await kit.committed()).values()) == fetched
        assert sample(running.metrics, "compute_events_applied_total") == fetched


class _CrashingCommit:
    """A real consumer whose commit never happens: the process 'dies' right before it."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    async def start(self) -> None:
        await self._inner.start()

    async def stop(self) -> None:
        await self._inner.stop()

    async def getmany(self, max_records: int, timeout_ms: int) -> list[LogRecord]:
        records: list[LogRecord] = await self._inner.getmany(max_records, timeout_ms)
        return records

    async def commit(self, next_offsets: Any) -> None:
        raise _Crash

    async def lag(self) -> dict[int, int]:
        lag: dict[int, int] = await self._inner.lag()
        return lag


class _StopAfterFetch(_CrashingCommit):
    """A real consumer; the worker is asked to stop as soon as a batch was fetched."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.worker: Any = None
        self.fetched = 0

    async def getmany(self, max_records: int, timeout_ms: int) -> list[LogRecord]:
        records = await super().getmany(max_records, timeout_ms)
        if records:
            self.fetched += len(records)
            self.worker.stop()
        return records

    async def commit(self, next_offsets: Any) -> None:
        await self._inner.commit(next_offsets)


class _Outage(DelegatingStore):
    """The real store, except that writes fail as in an outage while `down` is set."""

    def __init__(self, inner: OnlineStore) -> None:
        super().__init__(inner)
        self.down = True

    async def put(
        self,
        project_id: str,
        user_id: str,
        record: dict[str, Any],
        ttl_seconds: int,
        expected_generation: int | None,
    ) -> None:
        if self.down:
            raise ConnectionError("store unavailable")
        await self._inner.put(project_id, user_id, record, ttl_seconds, expected_generation)
