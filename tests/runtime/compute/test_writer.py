"""FeatureWriter over a real online store (SQLite and Redis): compare-and-set conflicts
are re-read and re-applied, redeliveries are skipped, the record carries the TTL."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import pytest

from app.core.settings import BackendSettings
from app.db import factory
from app.db.online_store import OnlineStore, RecordWrite, WriteConflict
from app.tiles.record import AppliedEvent, apply_batch
from runtime.compute.metrics import ComputeMetrics
from runtime.compute.specs import ProjectSpecs, build_specs, event_key
from runtime.compute.writer import FeatureWriter
from tests.conftest import requires_aerospike, unique
from tests.factories import new_id
from tests.runtime.compute.oracle import all_aggregations, config, pipeline
from tests.support.online import DelegatingStore

NOW = 1_767_225_600_000


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("redis", id="redis", marks=pytest.mark.redis),
        pytest.param("aerospike", id="aerospike", marks=requires_aerospike),
    ]
)
async def store(
    request: pytest.FixtureRequest, backend_settings: BackendSettings
) -> AsyncIterator[OnlineStore]:
    s = factory.make_online_store(
        backend_settings.model_copy(update={"online_store": request.param})
    )
    await s.initialize()
    try:
        yield s
    finally:
        await s.close()


def project_specs(pipeline_id: str) -> ProjectSpecs:
    snapshot = config(
        "shop",
        1,
        [pipeline(pipeline_id, "add_to_cart")],
        all_aggregations(pipeline_id, ["1h", "24h"]),
    )
    return build_specs(snapshot)


def events(pipeline_id: str, offsets: range) -> list[AppliedEvent]:
    return [
        AppliedEvent(
            3,
            o,
            event_key(pipeline_id, "add_to_cart"),
            NOW - o * 7_000,
            {"price": o % 11 + 0.5, "product_id": f"sku-{o % 5}"},
        )
        for o in offsets
    ]


def features(record: dict[str, Any]) -> Any:
    return record["features"]


class TestCompareAndSet:
    async def test_a_write_from_a_stale_read_is_re_read_and_re_applied(self, store: OnlineStore):
        project, p = unique("shop"), new_id()
        specs = project_specs(p)
        metrics = ComputeMetrics()
        writer = FeatureWriter(store, now_ms=lambda: NOW, metrics=metrics)
        first, second = events(p, range(0, 10)), events(p, range(10, 25))

        await writer.write_user(project, "u1", specs, first, None)
        # `None`: what a second consumer read before the first one wrote (a rebalance).
        result = await writer.write_user(project, "u1", specs, second, None)

        stored = await store.get(project, "u1")
        assert stored is not None
        expected = apply_batch(None, specs.by_event, first + second, NOW).record
        assert features(stored.record) == features(expected)
        assert stored.record["offsets"] == {"3": 24}
        assert result.applied == len(second)
        assert metrics.registry.get_sample_value("compute_store_conflicts_total") == 1

    async def test_events_already_applied_by_another_writer_are_skipped_not_counted_twice(
        self, store: OnlineStore
    ):
        project, p = unique("shop"), new_id()
        specs = project_specs(p)
        writer = FeatureWriter(store, now_ms=lambda: NOW)
        both = events(p, range(0, 30))

        await writer.write_user(project, "u1", specs, both[:20], None)
        result = await writer.write_user(project, "u1", specs, both, None)

        stored = await store.get(project, "u1")
        assert stored is not None
        assert features(stored.record) == features(
            apply_batch(None, specs.by_event, both, NOW).record
        )
        assert (result.applied, result.duplicates) == (10, 20)
        assert result.fresh == tuple(range(20, 30))

    async def test_a_full_redelivery_writes_nothing(self, store: OnlineStore):
        project, p = unique("shop"), new_id()
        specs = project_specs(p)
        writer = FeatureWriter(store, now_ms=lambda: NOW)
        batch = events(p, range(0, 5))
        await writer.write_user(project, "u1", specs, batch, None)
        before = await store.get(project, "u1")
        assert before is not None

        result = await writer.write_user(project, "u1", specs, batch, before)

        after = await store.get(project, "u1")
        assert after is not None
        assert after.generation == before.generation
        assert (result.applied, result.duplicates, result.fresh) == (0, 5, ())


class TestPrefetch:
    async def test_write_project_reads_every_user_once_and_writes_each(self, store: OnlineStore):
        project, p = unique("shop"), new_id()
        specs = project_specs(p)
        writer = FeatureWriter(store, now_ms=lambda: NOW, concurrency=4)
        per_user = {f"u{i}": events(p, range(i * 10, i * 10 + 10)) for i in range(12)}

        done = await writer.write_project(project, specs, per_user)

        assert sorted(done) == sorted(per_user)
        stored = await store.get_many(project, list(per_user))
        for (user, batch), record in zip(per_user.items(), stored, strict=True):
            assert record is not None, user
            assert features(record.record) == features(
                apply_batch(None, specs.by_event, batch, NOW).record
            )

    async def test_a_project_without_features_stores_nothing(self, store: OnlineStore):
        project, p = unique("shop"), new_id()
        specs = build_specs(config(project, 1, [pipeline(p, "add_to_cart")], []))
        writer = FeatureWriter(store, now_ms=lambda: NOW)

        done = await writer.write_project(project, specs, {"u1": events(p, range(3))})

        assert done["u1"].applied == 0
        assert done["u1"].fresh == (0, 1, 2)
        assert await store.get(project, "u1") is None


class _Rival(DelegatingStore):
    """The real store; `before_put_many` runs first on each put_many call (another
    consumer writing between this writer's read and its write)."""

    def __init__(self, inner: OnlineStore, before_put_many: Callable[[], Awaitable[None]]):
        super().__init__(inner)
        self._before = before_put_many

    async def put_many(
        self, project_id: str, writes: Sequence[RecordWrite], ttl_seconds: int
    ) -> list[WriteConflict | None]:
        await self._before()
        return await self._inner.put_many(project_id, writes, ttl_seconds)


class TestBatchWrite:
    async def test_a_user_changed_during_the_batch_is_re_read_and_the_others_written_at_once(
        self, store: OnlineStore
    ):
        project, p = unique("shop"), new_id()
        specs = project_specs(p)
        metrics = ComputeMetrics()
        per_user = {f"u{i}": events(p, range(i * 10 + 5, i * 10 + 10)) for i in range(4)}
        rival_events = events(p, range(20, 25))  # u2's first offsets, by the other consumer

        async def rival() -> None:
            if await store.get(project, "u2") is None:
                record = apply_batch(None, specs.by_event, rival_events, NOW).record
                await store.put(project, "u2", record, 3600, None)

        writer = FeatureWriter(_Rival(store, rival), now_ms=lambda: NOW, metrics=metrics)
        done = await writer.write_project(project, specs, per_user)

        assert sorted(done) == sorted(per_user)
        assert done["u2"].applied == 5
        assert metrics.registry.get_sample_value("compute_store_conflicts_total") == 1
        for user, batch in per_user.items():
            stored = await store.get(project, user)
            assert stored is not None, user
            applied = rival_events + batch if user == "u2" else batch
            assert features(stored.record) == features(
                apply_batch(None, specs.by_event, applied, NOW).record
            )

    async def test_with_one_attempt_a_conflict_is_raised_after_the_others_are_written(
        self, store: OnlineStore
    ):
        project, p = unique("shop"), new_id()
        specs = project_specs(p)
        per_user = {f"u{i}": events(p, range(i * 10, i * 10 + 5)) for i in range(3)}

        async def rival() -> None:
            if await store.get(project, "u0") is None:
                await store.put(project, "u0", {"features": {}}, 3600, None)

        writer = FeatureWriter(_Rival(store, rival), now_ms=lambda: NOW, max_attempts=1)
        written: dict[str, Any] = {}
        with pytest.raises(WriteConflict):
            await writer.write_project(project, specs, per_user, written)

        assert sorted(written) == ["u1", "u2"]
        for user in ("u1", "u2"):
            assert await store.get(project, user) is not None
