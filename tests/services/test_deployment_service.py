"""Deploy, rollback and history against both config stores and the real Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest

from app.core.config_loader import ConfigLoader, config_key, version_key
from app.core.errors import (
    AlreadyLive,
    DeploymentConflict,
    DeploymentFailed,
    DeploymentNotFound,
    InvalidConfig,
    NothingToDeploy,
    RollbackNotAllowed,
)
from app.db.cache import Cache
from app.db.config_store import ConfigStore
from app.db.documents import FeatureDocument, PipelineDocument
from app.db.redis_cache import RedisCache
from app.schemas.deployment import ConfigSnapshot, DeploymentStatus
from app.services.config_diff import diff, snapshot_from_draft
from app.services.deployment_service import DeploymentService
from tests.factories import deployment_document, feature_document, now, pipeline_document
from tests.support.own_redis import OwnRedis

pytestmark = pytest.mark.redis


async def add_pipeline(store: ConfigStore, project_id: str, **overrides: Any) -> PipelineDocument:
    overrides.setdefault("status", "active")
    doc = pipeline_document(project_id, **overrides)
    await store.insert_pipeline(doc)
    return doc


async def add_feature(
    store: ConfigStore, project_id: str, pipeline_id: str, **overrides: Any
) -> FeatureDocument:
    doc = feature_document(project_id, pipeline_id, **overrides)
    await store.insert_feature(doc)
    return doc


async def edit_feature(store: ConfigStore, doc: FeatureDocument, **changes: Any) -> FeatureDocument:
    current = await store.get_feature(doc.project_id, doc.id)
    assert current is not None
    updated = current.model_copy(update={**changes, "revision": current.revision + 1})
    assert await store.replace_feature(updated, current.revision)
    return updated


async def edit_pipeline(
    store: ConfigStore, doc: PipelineDocument, **changes: Any
) -> PipelineDocument:
    current = await store.get_pipeline(doc.project_id, doc.id)
    assert current is not None
    updated = current.model_copy(update={**changes, "revision": current.revision + 1})
    assert await store.replace_pipeline(updated, current.revision)
    return updated


async def draft_snapshot(store: ConfigStore, project_id: str) -> ConfigSnapshot:
    pipelines, _ = await store.list_pipelines(project_id)
    features, _ = await store.list_features(project_id)
    return snapshot_from_draft(project_id, 0, pipelines, features)


async def statuses(store: ConfigStore, project_id: str) -> dict[int, DeploymentStatus]:
    docs, _ = await store.list_deployments(project_id)
    return {d.version: d.status for d in docs}


async def shared_version(cache: Cache, project_id: str) -> int | None:
    raw = await cache.get(version_key(project_id))
    return int(raw) if raw is not None else None


class TestPending:
    async def test_empty_project_has_nothing_pending(self, service, project_id):
        pending = await service.pending(project_id)
        assert pending.base_version is None
        assert pending.changes == []

    async def test_pending_lists_the_draft_against_the_live_version(
        self, service, config_store, project_id
    ):
        p = await add_pipeline(config_store, project_id)
        f = await add_feature(config_store, project_id, p.id, time_windows=["1h", "24h"])
        pending = await service.pending(project_id)
        assert {(c.type, c.resource_id) for c in pending.changes} == {
            ("create", p.id),
            ("create", f"{p.id}/add_to_cart"),
            ("create", f.id),
        }
        await service.deploy(project_id, "alice")
        await edit_feature(config_store, f, time_windows=["5m", "1h", "24h"])
        pending = await service.pending(project_id)
        assert pending.base_version == 1
        assert [c.description for c in pending.changes] == [
            f"feature {f.name}: windows 1h,24h → 5m,1h,24h"
        ]


class TestDeploy:
    async def test_first_deploy_is_version_1_live_in_redis(
        self, service, config_store, cache, project_id
    ):
        p = await add_pipeline(config_store, project_id)
        await add_feature(config_store, project_id, p.id)
        deployment = await service.deploy(project_id, "alice", "first")
        assert (deployment.version, deployment.status) == (1, "success")
        assert deployment.deployed_by == "alice"
        assert deployment.description == "first"
        assert deployment.deployed_at is not None
        assert len(deployment.changes) == 3
        raw = await cache.get(config_key(project_id))
        assert raw is not None
        live = ConfigSnapshot.model_validate_json(raw)
        assert live.version == 1
        assert diff(live, await draft_snapshot(config_store, project_id)) == []
        assert "whsec_" not in raw.decode()
        stored = await config_store.latest_deployment(project_id)
        assert stored is not None
        assert stored.snapshot == live

    async def test_an_unchanged_draft_is_not_a_new_version(self, service, config_store, project_id):
        await add_pipeline(config_store, project_id)
        await service.deploy(project_id, "alice")
        with pytest.raises(NothingToDeploy):
            await service.deploy(project_id, "alice")
        assert await statuses(config_store, project_id) == {1: "success"}

    async def test_an_empty_project_has_nothing_to_deploy(self, service, project_id):
        with pytest.raises(NothingToDeploy):
            await service.deploy(project_id, "alice")

    async def test_an_invalid_draft_is_refused_with_every_problem(
        self, service, config_store, project_id
    ):
        p = await add_pipeline(config_store, project_id)
        a = await add_feature(config_store, project_id, p.id, source_event="nope")
        b = await add_feature(config_store, project_id, p.id, aggregation="SUM", field="currency")
        with pytest.raises(InvalidConfig) as info:
            await service.deploy(project_id, "alice")
        assert info.value.status_code == 422
        assert {(f.loc[1], f.type) for f in info.value.fields or []} == {
            (a.id, "event_missing"),
            (b.id, "field_not_numeric"),
        }
        assert await statuses(config_store, project_id) == {}

    async def test_deploy_edit_deploy_rollback_deploy_again(
        self, service, config_store, cache, project_id
    ):
        p = await add_pipeline(config_store, project_id)
        f = await add_feature(config_store, project_id, p.id, time_windows=["1h"])
        v1 = await service.deploy(project_id, "alice")
        v1_draft = await draft_snapshot(config_store, project_id)

        await edit_feature(config_store, f, time_windows=["5m", "1h"])
        extra = await add_feature(config_store, project_id, p.id, name="views_total")
        v2 = await service.deploy(project_id, "bob")
        assert v2.version == 2
        assert {c.resource_id for c in v2.changes} == {f.id, extra.id}

        v3 = await service.rollback(project_id, v1.id, "carol")
        assert (v3.version, v3.status, v3.rolled_back_from) == (3, "success", 1)
        assert v3.deployed_by == "carol"
        assert {(c.type, c.resource_id) for c in v3.changes} == {
            ("update", f.id),
            ("delete", extra.id),
        }
        assert await statuses(config_store, project_id) == {
            1: "success",
            2: "rolled_back",
            3: "success",
        }
        # The draft shows what is live again, so nothing is pending.
        assert diff(v1_draft, await draft_snapshot(config_store, project_id)) == []
        assert (await service.pending(project_id)).changes == []
        assert await shared_version(cache, project_id) == 3

        await edit_pipeline(config_store, p, description="edited after the rollback")
        v4 = await service.deploy(project_id, "alice")
        assert v4.version == 4
        assert [c.description for c in v4.changes] == [f"pipeline {p.name}: description changed"]
        assert await shared_version(cache, project_id) == 4


class TestConcurrency:
    async def test_two_concurrent_deploys_give_one_success_and_one_conflict(
        self, service, config_store, project_id
    ):
        p = await add_pipeline(config_store, project_id)
        for round_ in range(3):
            await add_feature(config_store, project_id, p.id)
            results = await asyncio.gather(
                service.deploy(project_id, "a"),
                service.deploy(project_id, "b"),
                return_exceptions=True,
            )
            successes = [r for r in results if not isinstance(r, BaseException)]
            errors = [r for r in results if isinstance(r, BaseException)]
            assert len(successes) == 1, results
            assert len(errors) == 1
            assert isinstance(errors[0], DeploymentConflict | NothingToDeploy)
            assert errors[0].status_code == 409
            assert successes[0].version > round_
        versions = await statuses(config_store, project_id)
        assert list(versions.values()).count("success") == 3

    async def test_a_deploy_while_another_is_in_progress_is_a_conflict(
        self, service, config_store, project_id, monkeypatch
    ):
        await add_pipeline(config_store, project_id)
        gate = await pause_status_updates(config_store, monkeypatch)
        first = asyncio.create_task(service.deploy(project_id, "a"))
        paused = await gate.next_call()
        with pytest.raises(DeploymentConflict, match="in progress"):
            await service.deploy(project_id, "b")
        paused.set()
        gate.release_all()
        assert (await first).status == "success"

    async def test_a_deployment_abandoned_in_progress_is_failed_by_the_next_deploy(
        self, config_store, cache, project_id
    ):
        await add_pipeline(config_store, project_id)
        stuck = deployment_document(
            project_id,
            1,
            status="deploying",
            deployed_at=None,
            created_at=now() - timedelta(hours=1),
        )
        await config_store.insert_deployment(stuck)
        service = DeploymentService(config_store, cache, stale_after=timedelta(minutes=2))
        deployment = await service.deploy(project_id, "alice")
        assert deployment.version == 2
        failed = await config_store.get_deployment(project_id, stuck.id)
        assert failed is not None
        assert failed.status == "failed"
        assert failed.error is not None
        assert "abandoned" in failed.error


class Gate:
    """Pauses every call of a real store method until the test lets it go on."""

    def __init__(self) -> None:
        self.arrivals: asyncio.Queue[asyncio.Event] = asyncio.Queue()
        self.seen: list[str] = []
        self.paused = True

    async def next_call(self) -> asyncio.Event:
        """Waits for the next paused call; setting the returned event lets it run."""
        return await asyncio.wait_for(self.arrivals.get(), timeout=30)

    def release_all(self) -> None:
        self.paused = False
        while not self.arrivals.empty():
            self.arrivals.get_nowait().set()


async def pause_status_updates(store: ConfigStore, monkeypatch: pytest.MonkeyPatch) -> Gate:
    gate = Gate()
    real: Callable[..., Awaitable[None]] = store.update_deployment_status

    async def gated(
        project_id: str, deployment_id: str, status: DeploymentStatus, **kw: Any
    ) -> None:
        gate.seen.append(status)
        if gate.paused:
            go = asyncio.Event()
            await gate.arrivals.put(go)
            await go.wait()
        await real(project_id, deployment_id, status, **kw)

    monkeypatch.setattr(store, "update_deployment_status", gated)
    return gate


class TestStates:
    async def test_a_deployment_is_pending_then_deploying_then_success(
        self, service, config_store, project_id, monkeypatch
    ):
        await add_pipeline(config_store, project_id)
        gate = await pause_status_updates(config_store, monkeypatch)
        task = asyncio.create_task(service.deploy(project_id, "alice"))
        observed: list[DeploymentStatus] = []
        for _ in range(2):
            go = await gate.next_call()
            doc = await config_store.latest_deployment(project_id, ("pending", "deploying"))
            assert doc is not None
            observed.append(doc.status)
            go.set()
        gate.release_all()
        result = await task
        assert observed == ["pending", "deploying"]
        assert gate.seen == ["deploying", "success"]
        assert result.status == "success"

    async def test_redis_unreachable_leaves_a_failed_record_and_the_previous_version_live(
        self, config_store, own_redis: OwnRedis, own_cache: RedisCache, project_id
    ):
        service = DeploymentService(config_store, own_cache)
        p = await add_pipeline(config_store, project_id)
        await service.deploy(project_id, "alice")
        await add_feature(config_store, project_id, p.id)

        own_redis.kill()
        with pytest.raises(DeploymentFailed) as info:
            await service.deploy(project_id, "alice")
        assert info.value.status_code == 503
        assert "version 1 stays live" in info.value.detail
        assert await statuses(config_store, project_id) == {1: "success", 2: "failed"}
        failed = await config_store.latest_deployment(project_id, ("failed",))
        assert failed is not None
        assert failed.error
        assert "CacheUnavailable" in failed.error
        live = await config_store.latest_deployment(project_id)
        assert live is not None
        assert live.version == 1

        # A loader starting now (Redis still down) runs version 1 from the store.
        loader = ConfigLoader(own_cache, config_store)
        snapshot = await loader.get(project_id)
        assert snapshot is not None
        assert snapshot.version == 1

        # Redis back (empty): the next deploy is version 3; 2 is never reused.
        own_redis.start()
        deployment = await service.deploy(project_id, "alice")
        assert deployment.version == 3
        assert await shared_version(own_cache, project_id) == 3

    async def test_a_failed_first_deploy_leaves_nothing_live(
        self, config_store, own_redis: OwnRedis, own_cache: RedisCache, project_id
    ):
        await add_pipeline(config_store, project_id)
        own_redis.kill()
        with pytest.raises(DeploymentFailed, match="nothing is live"):
            await DeploymentService(config_store, own_cache).deploy(project_id, "alice")
        assert await statuses(config_store, project_id) == {1: "failed"}
        assert await ConfigLoader(own_cache, config_store).get(project_id) is None


class TestRollback:
    async def test_unknown_target_is_not_found(self, service, project_id):
        with pytest.raises(DeploymentNotFound):
            await service.rollback(project_id, "0" * 24, "alice")

    async def test_rolling_back_to_the_live_version_is_a_conflict(
        self, service, config_store, project_id
    ):
        await add_pipeline(config_store, project_id)
        v1 = await service.deploy(project_id, "alice")
        with pytest.raises(AlreadyLive):
            await service.rollback(project_id, v1.id, "alice")

    async def test_rolling_back_to_a_version_whose_config_is_live_is_a_conflict(
        self, service, config_store, project_id
    ):
        p = await add_pipeline(config_store, project_id)
        v1 = await service.deploy(project_id, "alice")
        await add_feature(config_store, project_id, p.id)
        v2 = await service.deploy(project_id, "alice")
        await service.rollback(project_id, v1.id, "alice")  # v3 = v1's config
        await service.rollback(project_id, v2.id, "alice")  # v4 = v2's config
        with pytest.raises(AlreadyLive, match="version 4"):
            await service.rollback(project_id, v2.id, "alice")

    @pytest.mark.parametrize("status", ["failed", "pending", "deploying"])
    async def test_a_deployment_that_never_went_live_cannot_be_rolled_back_to(
        self, service, config_store, project_id, status
    ):
        target = deployment_document(project_id, 1, status=status, deployed_at=None)
        await config_store.insert_deployment(target)
        with pytest.raises(RollbackNotAllowed, match=status):
            await service.rollback(project_id, target.id, "alice")

    async def test_a_rolled_back_version_can_be_reactivated(
        self, service, config_store, project_id
    ):
        p = await add_pipeline(config_store, project_id)
        v1 = await service.deploy(project_id, "alice")
        await add_feature(config_store, project_id, p.id)
        v2 = await service.deploy(project_id, "alice")
        await service.rollback(project_id, v1.id, "alice")
        v4 = await service.rollback(project_id, v2.id, "alice")
        assert v4.rolled_back_from == 2
        assert await statuses(config_store, project_id) == {
            1: "success",
            2: "rolled_back",
            3: "rolled_back",
            4: "success",
        }
        live = await config_store.latest_deployment(project_id)
        target = await config_store.get_deployment(project_id, v2.id)
        assert live is not None
        assert target is not None
        assert diff(live.snapshot, target.snapshot) == []
