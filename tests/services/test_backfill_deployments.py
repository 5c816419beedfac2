"""The deployment state machine with backfills, on both config stores (FerretDB and
SQLite) and the real Redis: `backfilling` with progress while the old version stays
live, then `success` or `failed`; what needs a backfill."""

from __future__ import annotations

from datetime import timedelta

import pytest

from app.core.config_loader import ConfigLoader
from app.core.errors import DeploymentConflict
from app.db.config_store import ConfigStore
from app.db.redis_cache import RedisCache
from app.schemas.deployment import AggregateFeatureSnapshot
from app.services.common import utc_now
from app.services.deployment_service import DeploymentService, needs_backfill
from app.tiles.staging import staged_name
from runtime.compute.specs import build_specs
from tests.factories import new_id
from tests.runtime.compute.oracle import config, feature, pipeline
from tests.services.test_deployment_service import (
    add_feature,
    add_pipeline,
    edit_feature,
    statuses,
)

pytestmark = pytest.mark.redis


def spend(
    pipeline_id: str, aggregation: str = "SUM", windows: list[str] | None = None
) -> AggregateFeatureSnapshot:
    return feature("spend", pipeline_id, aggregation, windows or ["1h"], field_name="price")


class TestWhatNeedsABackfill:
    def test_new_and_changed_features_need_one_others_carry_over(self) -> None:
        pl = new_id()
        live = config(
            "p", 1, [pipeline(pl, "add_to_cart")], [spend(pl), feature("n", pl, "COUNT", ["1h"])]
        )
        target = config(
            "p",
            2,
            [pipeline(pl, "add_to_cart", "purchase")],
            [
                spend(pl, "AVG"),  # changed definition: its fingerprint differs
                feature("n", pl, "COUNT", ["1h", "30d"]),  # a window more: carried over
                feature("carts_30d", pl, "COUNT", ["30d"]),  # new
                # New, but on an event no live version accepted: nothing is archived.
                feature("buys", pl, "COUNT", ["1h"], source_event="purchase"),
            ],
        )
        assert needs_backfill(live, target) == ["spend", "carts_30d"]

    def test_a_first_deploy_needs_none(self) -> None:
        pl = new_id()
        assert (
            needs_backfill(None, config("p", 1, [pipeline(pl, "add_to_cart")], [spend(pl)])) == []
        )

    def test_staged_features_run_under_their_staged_names_only_in_compute(self) -> None:
        pl = new_id()
        snapshot = config("p", 1, [pipeline(pl, "add_to_cart")], [spend(pl)])
        changed = spend(pl, "AVG")
        running = snapshot.model_copy(update={"staged": [changed], "staged_version": 2})
        specs = build_specs(running).specs
        fingerprint = (
            build_specs(config("p", 2, snapshot.pipelines, [changed])).specs[0].fingerprint
        )
        assert [s.name for s in specs] == ["spend", staged_name("spend", fingerprint)]
        assert specs[1].fingerprint == fingerprint != specs[0].fingerprint


async def deploy_v1_then_add_a_feature(
    store: ConfigStore, service: DeploymentService, project_id: str
) -> None:
    pl = await add_pipeline(store, project_id)
    await add_feature(store, project_id, pl.id, name="carts", aggregation="COUNT")
    assert (await service.deploy(project_id, "alice")).status == "success"
    await add_feature(store, project_id, pl.id, name="carts_30d", time_windows=["30d"])


class TestBackfillingDeployments:
    async def test_a_new_feature_backfills_with_progress_while_the_old_version_serves(
        self, config_store: ConfigStore, cache: RedisCache, project_id: str
    ) -> None:
        service = DeploymentService(config_store, cache, backfill=True)
        await deploy_v1_then_add_a_feature(config_store, service, project_id)
        v2 = await service.deploy(project_id, "alice")
        assert v2.status == "backfilling"
        assert v2.backfill is not None
        assert v2.backfill.features == ["carts_30d"]
        assert v2.backfill.phase == "catching_up"
        assert v2.backfill.heartbeat_at is not None
        # Live is still version 1; compute gets the new feature staged, from Redis and
        # (Redis emptied) from the store alike.
        for empty_redis in (False, True):
            if empty_redis:
                await cache.delete(f"dps:config:{project_id}")
                await cache.delete(f"dps:config-version:{project_id}")
            loader = ConfigLoader(cache, config_store)
            running = await loader.get(project_id)
            assert running is not None
            assert running.version == 1
            assert running.staged_version == 2
            assert [f.name for f in running.staged] == ["carts_30d"]
            assert [f.name for f in running.features] == ["carts"]
        listed = (await service.list_deployments(project_id)).items[0]
        assert listed.status == "backfilling"
        assert listed.backfill is not None
        assert listed.backfill.features == ["carts_30d"]

    async def test_another_deploy_or_a_rollback_waits_for_the_backfill(
        self, config_store: ConfigStore, cache: RedisCache, project_id: str
    ) -> None:
        service = DeploymentService(config_store, cache, backfill=True)
        await deploy_v1_then_add_a_feature(config_store, service, project_id)
        await service.deploy(project_id, "alice")
        with pytest.raises(DeploymentConflict, match="backfilling"):
            await service.deploy(project_id, "alice")
        v1 = (await service.list_deployments(project_id)).items[1]
        with pytest.raises(DeploymentConflict):
            await service.rollback(project_id, v1.id, "alice")

    async def test_completing_makes_the_version_live(
        self, config_store: ConfigStore, cache: RedisCache, project_id: str
    ) -> None:
        service = DeploymentService(config_store, cache, backfill=True)
        await deploy_v1_then_add_a_feature(config_store, service, project_id)
        v2 = await service.deploy(project_id, "alice")
        doc = await config_store.get_deployment(project_id, v2.id)
        assert doc is not None
        assert await service.complete_backfill(doc)
        done = await service.get(project_id, v2.id)
        assert done.status == "success"
        assert done.deployed_at is not None
        assert done.backfill is not None
        assert done.backfill.phase == "done"
        running = await ConfigLoader(cache, config_store).get(project_id)
        assert running is not None
        assert (running.version, running.staged_version) == (2, None)
        assert sorted(f.name for f in running.features) == ["carts", "carts_30d"]

    async def test_a_failed_backfill_records_the_reason_and_the_old_version_stays_live(
        self, config_store: ConfigStore, cache: RedisCache, project_id: str
    ) -> None:
        service = DeploymentService(config_store, cache, backfill=True)
        await deploy_v1_then_add_a_feature(config_store, service, project_id)
        v2 = await service.deploy(project_id, "alice")
        doc = await config_store.get_deployment(project_id, v2.id)
        assert doc is not None
        await service.fail_backfill(doc, "the archive did not catch up")
        failed = await service.get(project_id, v2.id)
        assert failed.status == "failed"
        assert failed.error == "backfill failed: the archive did not catch up"
        assert await statuses(config_store, project_id) == {1: "success", 2: "failed"}
        running = await ConfigLoader(cache, config_store).get(project_id)
        assert running is not None
        assert (running.version, running.staged, running.staged_version) == (1, [], None)
        # Completing after the failure does nothing.
        assert not await service.complete_backfill(doc)
        assert (await service.get(project_id, v2.id)).status == "failed"
        # And the draft deploys again.
        assert (await service.deploy(project_id, "alice")).status == "backfilling"

    async def test_a_backfill_without_progress_is_failed_by_the_next_deploy(
        self, config_store: ConfigStore, cache: RedisCache, project_id: str
    ) -> None:
        service = DeploymentService(
            config_store, cache, backfill=True, backfill_stale_after=timedelta(seconds=30)
        )
        await deploy_v1_then_add_a_feature(config_store, service, project_id)
        v2 = await service.deploy(project_id, "alice")
        doc = await config_store.get_deployment(project_id, v2.id)
        assert doc is not None
        assert doc.backfill is not None
        silent = doc.backfill.model_copy(update={"heartbeat_at": utc_now() - timedelta(minutes=1)})
        assert await config_store.update_backfill(project_id, v2.id, silent)
        v3 = await service.deploy(project_id, "alice")
        assert v3.version == 3
        assert v3.status == "backfilling"
        abandoned = await service.get(project_id, v2.id)
        assert abandoned.status == "failed"
        assert abandoned.error is not None
        assert "abandoned: backfilling" in abandoned.error

    async def test_progress_is_stored_only_while_backfilling(
        self, config_store: ConfigStore, cache: RedisCache, project_id: str
    ) -> None:
        service = DeploymentService(config_store, cache, backfill=True)
        await deploy_v1_then_add_a_feature(config_store, service, project_id)
        v2 = await service.deploy(project_id, "alice")
        doc = await config_store.get_deployment(project_id, v2.id)
        assert doc is not None
        assert doc.backfill is not None
        step = doc.backfill.model_copy(
            update={"phase": "filling", "users_done": 7, "users_total": 9}
        )
        assert await config_store.update_backfill(project_id, v2.id, step)
        shown = (await service.get(project_id, v2.id)).backfill
        assert shown is not None
        assert (shown.phase, shown.users_done, shown.users_total) == ("filling", 7, 9)
        assert [
            d.id
            for d in await config_store.deployments_in_status("backfilling")
            if d.project_id == project_id
        ] == [v2.id]
        await config_store.update_deployment_status(project_id, v2.id, "failed", error="x")
        assert not await config_store.update_backfill(project_id, v2.id, step)

    async def test_without_an_archive_a_new_feature_goes_live_at_once(
        self, config_store: ConfigStore, cache: RedisCache, project_id: str
    ) -> None:
        service = DeploymentService(config_store, cache, backfill=False)
        await deploy_v1_then_add_a_feature(config_store, service, project_id)
        v2 = await service.deploy(project_id, "alice")
        assert v2.status == "success"
        assert v2.backfill is None

    async def test_a_changed_definition_backfills(
        self, config_store: ConfigStore, cache: RedisCache, project_id: str
    ) -> None:
        service = DeploymentService(config_store, cache, backfill=True)
        pl = await add_pipeline(config_store, project_id)
        f = await add_feature(
            config_store, project_id, pl.id, name="spend", aggregation="SUM", field="price"
        )
        await service.deploy(project_id, "alice")
        await edit_feature(config_store, f, aggregation="MAX")
        v2 = await service.deploy(project_id, "alice")
        assert v2.status == "backfilling"
        assert v2.backfill is not None
        assert v2.backfill.features == ["spend"]
