"""The training-job store on each config store kind (SQLite, FerretDB for MongoDB: no
transactions, no TTL indexes): jobs are per project, a finished job stays finished, and
a job whose heartbeat is stale is marked failed."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from app.core.settings import BackendSettings
from app.db.training_jobs import TrainingJob, TrainingJobStore, make_training_job_store
from tests.support.stores import config_backends as config_backends


@pytest.fixture
async def jobs(config_backends: BackendSettings) -> AsyncIterator[TrainingJobStore]:
    store = make_training_job_store(config_backends)
    await store.initialize()
    try:
        yield store
    finally:
        await store.close()


def job(job_id: str, project: str = "p1", state: str = "queued", at: int = 1_000) -> TrainingJob:
    return TrainingJob.model_validate(
        {
            "id": job_id,
            "project_id": project,
            "version": 3,
            "state": state,
            "rows_total": 50_000,
            "created_ms": at,
            "updated_ms": at,
        }
    )


class TestTrainingJobStore:
    async def test_a_job_reads_back_in_its_project_only(self, jobs: TrainingJobStore) -> None:
        await jobs.insert(job("a"))
        assert await jobs.get("p1", "a") == job("a")
        assert await jobs.get("p2", "a") is None
        assert await jobs.get("p1", "missing") is None

    async def test_progress_then_success_and_a_finished_job_stays_finished(
        self, jobs: TrainingJobStore
    ) -> None:
        await jobs.insert(job("b"))
        assert await jobs.update(
            "b", {"state": "running", "rows_done": 2_000, "updated_ms": 2_000}, only_active=True
        )
        got = await jobs.get("p1", "b")
        assert got is not None
        assert (got.state, got.rows_done, got.updated_ms) == ("running", 2_000, 2_000)
        assert await jobs.update("b", {"state": "succeeded", "updated_ms": 3_000}, only_active=True)
        assert not await jobs.update("b", {"state": "failed"}, only_active=True)
        got = await jobs.get("p1", "b")
        assert got is not None
        assert got.state == "succeeded"

    async def test_only_active_jobs_with_a_stale_heartbeat_are_failed(
        self, jobs: TrainingJobStore
    ) -> None:
        await jobs.insert(job("old", at=1_000))
        await jobs.insert(job("running-old", state="running", at=1_500))
        await jobs.insert(job("fresh", at=9_000))
        await jobs.insert(job("done", state="succeeded", at=1_000))
        assert await jobs.fail_stale(5_000, "runner died", 10_000) == 2
        states = {}
        for job_id in ("old", "running-old", "fresh", "done"):
            got = await jobs.get("p1", job_id)
            assert got is not None
            states[job_id] = (got.state, got.error)
        assert states == {
            "old": ("failed", "runner died"),
            "running-old": ("failed", "runner died"),
            "fresh": ("queued", None),
            "done": ("succeeded", None),
        }
