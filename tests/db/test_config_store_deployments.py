"""The ConfigStore contract for deployments, against every implementation."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from app.db.config_store import ConfigStore, DuplicateKey
from tests.conftest import unique
from tests.factories import (
    deployment_document,
    feature_document,
    new_id,
    now,
    pipeline_document,
    snapshot,
)


def _project() -> str:
    return unique("proj")


class TestDeploymentWrites:
    async def test_inserted_deployment_reads_back_with_its_snapshot(
        self, config_store: ConfigStore
    ) -> None:
        project = _project()
        pipeline = pipeline_document(project)
        feature = feature_document(project, pipeline.id)
        doc = deployment_document(project, 1, snapshot=snapshot(project, 1, [pipeline], [feature]))
        await config_store.insert_deployment(doc)
        assert await config_store.get_deployment(project, doc.id) == doc
        assert await config_store.get_deployment(_project(), doc.id) is None

    async def test_a_version_is_used_once_per_project(self, config_store: ConfigStore) -> None:
        project = _project()
        await config_store.insert_deployment(deployment_document(project, 1))
        with pytest.raises(DuplicateKey) as err:
            await config_store.insert_deployment(deployment_document(project, 1))
        assert err.value.key == "version"
        await config_store.insert_deployment(deployment_document(_project(), 1))

    async def test_concurrent_inserts_of_one_version_let_exactly_one_win(
        self, config_store: ConfigStore
    ) -> None:
        project = _project()
        docs = [deployment_document(project, 7, description=f"deploy {i}") for i in range(6)]
        results = await asyncio.gather(
            *(config_store.insert_deployment(d) for d in docs), return_exceptions=True
        )
        winners = [d for d, r in zip(docs, results, strict=True) if r is None]
        losers = [r for r in results if r is not None]
        assert len(winners) == 1
        assert all(isinstance(r, DuplicateKey) and r.key == "version" for r in losers)
        assert await config_store.list_deployments(project) == (winners, 1)

    async def test_status_update_stamps_only_what_is_given(self, config_store: ConfigStore) -> None:
        project = _project()
        doc = deployment_document(project, 1, status="deploying", deployed_at=None)
        await config_store.insert_deployment(doc)

        await config_store.update_deployment_status(project, doc.id, "failed", error="bad window")
        failed = await config_store.get_deployment(project, doc.id)
        assert failed == doc.model_copy(update={"status": "failed", "error": "bad window"})

        when = now() + timedelta(seconds=1)
        await config_store.update_deployment_status(project, doc.id, "success", deployed_at=when)
        done = await config_store.get_deployment(project, doc.id)
        expected = doc.model_copy(
            update={"status": "success", "error": "bad window", "deployed_at": when}
        )
        assert done == expected

    async def test_status_update_in_another_project_changes_nothing(
        self, config_store: ConfigStore
    ) -> None:
        project = _project()
        doc = deployment_document(project, 1, status="deploying")
        await config_store.insert_deployment(doc)
        await config_store.update_deployment_status(_project(), doc.id, "failed")
        assert await config_store.get_deployment(project, doc.id) == doc

    async def test_mark_rolled_back_touches_later_successes_only(
        self, config_store: ConfigStore
    ) -> None:
        project = _project()
        statuses = {1: "success", 2: "success", 3: "failed", 4: "success", 5: "rolled_back"}
        docs = {v: deployment_document(project, v, status=s) for v, s in statuses.items()}
        for doc in docs.values():
            await config_store.insert_deployment(doc)
        other = deployment_document(_project(), 4)
        await config_store.insert_deployment(other)

        assert await config_store.mark_rolled_back(project, after_version=1) == 2
        page, _ = await config_store.list_deployments(project)
        assert {d.version: d.status for d in page} == {
            1: "success",
            2: "rolled_back",
            3: "failed",
            4: "rolled_back",
            5: "rolled_back",
        }
        assert await config_store.get_deployment(other.project_id, other.id) == other


class TestDeploymentReads:
    async def test_list_is_newest_first_and_pages_cleanly(self, config_store: ConfigStore) -> None:
        project = _project()
        docs = [deployment_document(project, v) for v in range(1, 8)]
        for doc in docs:
            await config_store.insert_deployment(doc)
        newest_first = list(reversed(docs))
        assert await config_store.list_deployments(project) == (newest_first, 7)
        seen = []
        for offset in (0, 3, 6):
            page, total = await config_store.list_deployments(project, limit=3, offset=offset)
            assert total == 7
            seen.extend(page)
        assert seen == newest_first

    async def test_latest_deployment_picks_the_highest_version_in_statuses(
        self, config_store: ConfigStore
    ) -> None:
        project = _project()
        assert await config_store.latest_deployment(project) is None
        for version, status in [(1, "success"), (2, "success"), (3, "failed"), (4, "pending")]:
            await config_store.insert_deployment(
                deployment_document(project, version, status=status)
            )
        latest = await config_store.latest_deployment(project)
        assert latest is not None
        assert latest.version == 2
        any_final = await config_store.latest_deployment(project, statuses=("success", "failed"))
        assert any_final is not None
        assert any_final.version == 3
        assert await config_store.latest_deployment(project, statuses=("rolled_back",)) is None

    async def test_deployed_projects_lists_those_with_a_success(
        self, config_store: ConfigStore
    ) -> None:
        live, failed_only, rolled = _project(), _project(), _project()
        await config_store.insert_deployment(deployment_document(live, 1))
        await config_store.insert_deployment(deployment_document(live, 2))
        await config_store.insert_deployment(deployment_document(failed_only, 1, status="failed"))
        await config_store.insert_deployment(deployment_document(rolled, 1, status="rolled_back"))
        assert await config_store.deployed_projects() == [live]

    async def test_unknown_deployment_is_none(self, config_store: ConfigStore) -> None:
        assert await config_store.get_deployment(_project(), new_id()) is None
