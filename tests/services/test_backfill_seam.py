"""Backfill on deploy on real Kafka, Redis, chDB and the SQLite stores, with compute and
the archive running and events flowing during the backfill: the old version serves
until the new one is live, then every feature equals the oracle over every accepted
event, past ones included, nothing counted twice at the seam (copies too)."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest

from app.core.settings import BackendSettings
from app.db.clickhouse import ChdbSink
from app.db.config_store import ConfigStore
from app.db.documents import DeploymentDocument
from app.schemas.deployment import AggregateFeatureSnapshot, ConfigSnapshot
from app.schemas.event import record_key
from app.services.backfill_service import BackfillOptions, BackfillRunner
from app.services.deployment_service import DeploymentService
from app.services.rebuild_service import RebuildService
from app.tiles.record import serve
from app.tiles.staging import STAGED_MARK
from runtime.archive.metrics import ArchiveMetrics
from runtime.archive.worker import ArchiveOptions, ArchiveWorker
from runtime.compute.specs import build_specs
from runtime.compute.worker import wall_clock_ms
from tests.conftest import unique
from tests.runtime.compute.harness import CATCH_UP_BOUND_S, ComputeKit, Running, started_kit
from tests.runtime.compute.oracle import RawEvent, assert_same_values, message, oracle_values
from tests.services.test_deployment_service import add_feature, add_pipeline, edit_feature
from tests.support.archive import chdb_archive

pytestmark = [pytest.mark.kafka, pytest.mark.redis]

NOW = wall_clock_ms() // 60_000 * 60_000
MINUTE, DAY = 60_000, 86_400_000
USERS = 25


class Events:
    """Produces events (and later copies of some) and remembers the accepted ones."""

    def __init__(self, kit: ComputeKit, project_id: str, pipeline_id: str) -> None:
        self._kit = kit
        self._project = project_id
        self._pipeline = pipeline_id
        self._rng = random.Random(7)
        self._n = 0
        self.sent: list[RawEvent] = []  # one entry per event id
        self._records: list[tuple[bytes, bytes]] = []
        self.copies = 0

    def _raw(self, max_age_ms: int) -> RawEvent:
        rng = self._rng
        return RawEvent(
            f"u{rng.randrange(USERS)}",
            self._pipeline,
            "add_to_cart",
            NOW - rng.randrange(0, max_age_ms),
            {"product_id": f"sku-{rng.randrange(9)}", "price": rng.randrange(1, 500)},
        )

    async def send(self, count: int, max_age_ms: int, copies_every: int = 0) -> None:
        records = []
        for _ in range(count):
            raw = self._raw(max_age_ms)
            self._n += 1
            # Received now (whatever its event time), as ingestion stamps it.
            stamped = message(self._project, raw, 1, self._n)
            value = stamped.model_copy(update={"received_at_ms": NOW}).encode()
            record = (record_key(self._project, raw.user_id), value)
            records.append(record)
            self._records.append(record)
            self.sent.append(raw)
            if copies_every and self._n % copies_every == 0:
                # A copy of an earlier event (a producer retry): counted once.
                records.append(self._records[self._rng.randrange(len(self._records))])
                self.copies += 1
        await self._kit.producer.produce_many(records)

    @property
    def records(self) -> int:
        return len(self.sent) + self.copies


@pytest.fixture
async def kit(backend_settings: BackendSettings) -> AsyncIterator[ComputeKit]:
    async with started_kit(backend_settings, "sqlite", NOW) as k:
        yield k


@pytest.fixture
async def archive(backend_settings: BackendSettings) -> AsyncIterator[ChdbSink]:
    async with chdb_archive(backend_settings) as sink:
        yield sink


@contextlib.asynccontextmanager
async def running_archive(kit: ComputeKit, archive: ChdbSink) -> AsyncIterator[ArchiveWorker]:
    worker = ArchiveWorker(
        kit.consumer(unique("archive")),
        archive,
        metrics=ArchiveMetrics(),
        options=ArchiveOptions(max_batch_messages=100, poll_timeout_ms=100),
    )
    task = asyncio.create_task(worker.run())
    try:
        yield worker
    finally:
        worker.stop()
        await task


async def values(
    kit: ComputeKit, project: str, specs: tuple[Any, ...], user: str
) -> dict[str, Any]:
    stored = await kit.store.get(project, user)
    return serve(stored.record if stored else None, specs, NOW)


async def assert_oracle(
    kit: ComputeKit, project: str, snapshot: ConfigSnapshot, events: list[RawEvent]
) -> None:
    specs = build_specs(snapshot.model_copy(update={"staged": []})).specs
    for user in sorted({e.user_id for e in events}):
        aggregates = [f for f in snapshot.features if isinstance(f, AggregateFeatureSnapshot)]
        want = oracle_values(aggregates, [e for e in events if e.user_id == user], NOW)
        assert_same_values(await values(kit, project, specs, user), want)


async def wait_status(
    store: ConfigStore, project: str, deployment_id: str, *wanted: str
) -> DeploymentDocument:
    async with asyncio.timeout(CATCH_UP_BOUND_S):
        while True:
            doc = await store.get_deployment(project, deployment_id)
            assert doc is not None
            if doc.status in wanted:
                return doc
            await asyncio.sleep(0.05)


def runner(
    kit: ComputeKit, archive: ChdbSink, worker: ArchiveWorker, **options: Any
) -> BackfillRunner:
    return BackfillRunner(
        kit.config_store,
        kit.cache,
        archive,
        RebuildService(archive, kit.store, now_ms=kit.clock, chunk_users=4),
        worker.log_ends,
        options=BackfillOptions(**{"settle_s": 1.0, "poll_s": 0.1, **options}),
    )


class TestBackfillOnDeploy:
    async def test_new_and_changed_features_equal_the_oracle_with_events_flowing_meanwhile(
        self, kit: ComputeKit, archive: ChdbSink
    ) -> None:
        project = unique("proj")
        store = kit.config_store
        deployments = DeploymentService(store, kit.cache, backfill=True)
        pl = await add_pipeline(store, project)
        await add_feature(store, project, pl.id, name="carts", time_windows=["5m", "1h"])
        spend = await add_feature(
            store,
            project,
            pl.id,
            name="spend",
            aggregation="SUM",
            field="price",
            time_windows=["1h"],
        )
        v1 = await deployments.deploy(project, "alice")
        assert v1.status == "success"
        live = await store.get_deployment(project, v1.id)
        assert live is not None
        events = Events(kit, project, pl.id)
        compute: Running = kit.run()
        async with running_archive(kit, archive) as worker:
            # Past: 8 days of events; most are older than every live window (late for
            # compute), but archived. The new 30-day feature must count them.
            await events.send(300, 8 * DAY, copies_every=10)
            await compute.wait_processed(events.records)

            # Deploy a new 30-day feature and a changed one (SUM -> MAX, two windows).
            await add_feature(store, project, pl.id, name="carts_30d", time_windows=["30d"])
            await edit_feature(store, spend, aggregation="MAX", time_windows=["1h", "7d"])
            v2 = await deployments.deploy(project, "alice")
            assert v2.status == "backfilling"
            assert v2.backfill is not None
            assert sorted(v2.backfill.features) == [
                "carts_30d",
                "spend",
            ]

            # Events while it backfills: the old version serves them, as the oracle of
            # the old definitions says (the changed `spend` is still a SUM).
            await events.send(120, 10 * MINUTE, copies_every=7)
            await compute.wait_processed(events.records)
            await assert_oracle(kit, project, live.snapshot, events.sent)

            # The runner fills while events keep flowing, copies included.
            fill = runner(kit, archive, worker)
            filling = asyncio.create_task(fill.run_forever())
            try:
                for _ in range(30):
                    await events.send(8, 20 * MINUTE, copies_every=5)
                    await asyncio.sleep(0.05)
                done = await wait_status(store, project, v2.id, "success", "failed")
                assert done.status == "success", done.error
                assert done.backfill is not None
                assert done.backfill.phase == "done"
                assert done.backfill.users_total == USERS
                assert done.backfill.users_done >= USERS
                await events.send(60, 5 * MINUTE, copies_every=4)
                await compute.wait_processed(events.records)
            finally:
                filling.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await filling

        target = await store.get_deployment(project, v2.id)
        assert target is not None
        await assert_oracle(kit, project, target.snapshot, events.sent)
        # Compute moved what it wrote since out of the staged names.
        written = {e.user_id for e in events.sent[-60:]}
        for user in written:
            stored = await kit.store.get(project, user)
            assert stored is not None
            assert not [k for k in stored.record["features"] if STAGED_MARK in k]
        await compute.stop()

    async def test_a_backfill_whose_archive_never_catches_up_fails_and_the_old_version_stays(
        self, kit: ComputeKit, archive: ChdbSink
    ) -> None:
        project = unique("proj")
        store = kit.config_store
        deployments = DeploymentService(store, kit.cache, backfill=True)
        pl = await add_pipeline(store, project)
        await add_feature(store, project, pl.id, name="carts", time_windows=["1h"])
        v1 = await deployments.deploy(project, "alice")
        live = await store.get_deployment(project, v1.id)
        assert live is not None
        events = Events(kit, project, pl.id)
        compute = kit.run()
        await add_feature(store, project, pl.id, name="carts_30d", time_windows=["30d"])
        v2 = await deployments.deploy(project, "alice")
        # No archive worker runs (the archive is stuck): events reach compute only. The
        # log's end offsets come from a member of another group holding every partition.
        await events.send(50, 10 * MINUTE)
        await compute.wait_processed(events.records)
        log = kit.consumer(unique("ends"))
        async with asyncio.timeout(CATCH_UP_BOUND_S):
            while not await log.end_offsets():
                await log.getmany(1, 200)  # the group assigns partitions on a fetch
        fill = BackfillRunner(
            store,
            kit.cache,
            archive,
            RebuildService(archive, kit.store, now_ms=kit.clock),
            log.end_offsets,
            options=BackfillOptions(settle_s=0.1, catch_up_timeout_s=1.0),
        )
        try:
            assert await fill.run_once() >= 1
        finally:
            await log.stop()
        failed = await store.get_deployment(project, v2.id)
        assert failed is not None
        assert failed.status == "failed"
        assert failed.error is not None
        assert "archive did not catch up" in failed.error
        # The runtimes hear of it (notice or poll) and drop the staged feature.
        async with asyncio.timeout(CATCH_UP_BOUND_S):
            while True:  # the loader offers no event to wait on
                running = await kit.loader.get(project)
                assert running is not None
                if not running.staged:
                    break
                await asyncio.sleep(0.05)
        assert running.version == 1
        await assert_oracle(kit, project, live.snapshot, events.sent)
        await compute.stop()
