"""Training sets too large for one request, run as jobs inside the config API process.

`submit` checks the request as the synchronous path does (the deployed config serves
every key asked; at most `JOB_MAX_ROWS` rows, 413 beyond), stores the job `queued` in
the config store's database (`app/db/training_jobs.py`) and starts it in the
background; jobs run one at a time per process (each holds its rows and builds in
chunks of users, so memory stays bounded by one job). While a job is queued or running,
its process writes a heartbeat every `stale_after / 3` and the rows done after each
chunk. The result is written to `DATA_DIR/training-jobs/<id>.<csv|parquet>` (a
temporary file renamed when complete, so a reader never sees half a file), then the job
is `succeeded`; an error marks it `failed` with the reason.

A job whose process died (kill -9, a crash, a host lost) stops beating: `fail_stale`
marks it failed once its heartbeat is older than `stale_after`, at the API's start-up
and whenever a job is read, so a client polling it learns it failed and submits it
again. Jobs are not resumed: their rows lived in the dead process.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack, suppress
from pathlib import Path
from typing import Literal

from app.core.errors import Conflict, NotFound, PayloadTooLarge
from app.core.service import Resources, StartupHook
from app.db.clickhouse import ClickHouseClientSink
from app.db.training_jobs import TrainingJob, TrainingJobStore, make_training_job_store
from app.schemas.deployment import ConfigSnapshot
from app.services.training_set_service import (
    MAX_ROWS,
    TrainingRow,
    TrainingSet,
    TrainingSetService,
)

logger = logging.getLogger(__name__)

# Rows one job takes: 100 times the synchronous limit. The config API's body limit
# (API_MAX_BODY_BYTES, 1 MiB by default: about 45,000 CSV rows) bounds it first unless
# raised; at this size a job holds ~100 MB of rows and answer in its process.
JOB_MAX_ROWS = 1_000_000
DIED = "the process running this job stopped before it finished; submit it again"


class TrainingJobTooLarge(PayloadTooLarge):
    """More rows than one training-set job takes."""


class TrainingJobNotFound(NotFound):
    """No such training-set job in this project."""


class TrainingJobNotFinished(Conflict):
    """The job has no result (yet, or it failed)."""


def _write(answer: TrainingSet, format: str, path: Path) -> None:
    path.write_bytes(answer.to_parquet() if format == "parquet" else answer.to_csv().encode())


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class TrainingJobs:
    """Runs and reports training-set jobs (see the module docstring)."""

    def __init__(
        self,
        store: TrainingJobStore,
        training: TrainingSetService,
        results_dir: Path,
        *,
        stale_after_s: float,
        now_ms: Callable[[], int] = _now_ms,
    ) -> None:
        self._store = store
        self._training = training
        self._dir = results_dir
        self._stale_ms = int(stale_after_s * 1000)
        self._now_ms = now_ms
        self._one_at_a_time = asyncio.Semaphore(1)
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Marks failed the jobs whose runner died (run at start-up)."""
        self._dir.mkdir(parents=True, exist_ok=True)
        failed = await self._fail_stale()
        if failed:
            logger.warning("training jobs whose process died marked failed", extra={"jobs": failed})

    async def close(self) -> None:
        """Stops this process's jobs; they are marked failed (nothing resumes them)."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with suppress(asyncio.CancelledError):
                await task

    async def _fail_stale(self) -> int:
        now = self._now_ms()
        return await self._store.fail_stale(now - self._stale_ms, DIED, now)

    def result_path(self, job: TrainingJob) -> Path:
        """Returns where a job's answer is written."""
        return self._dir / f"{job.id}.{job.format}"

    async def submit(
        self,
        snapshot: ConfigSnapshot,
        rows: Sequence[TrainingRow],
        features: Sequence[str] | None,
        format: Literal["csv", "parquet"],
    ) -> TrainingJob:
        """Returns the new job, `queued` and started in the background.

        Raises TrainingJobTooLarge beyond JOB_MAX_ROWS rows, UnknownTrainingFeature for
        a key the deployed config does not serve (checked now, not when it runs)."""
        if len(rows) > JOB_MAX_ROWS:
            raise TrainingJobTooLarge(
                f"{len(rows)} rows: at most {JOB_MAX_ROWS} a job ({MAX_ROWS} are answered at once)"
            )
        self._training.columns(snapshot, features)  # raises for an unknown key
        now = self._now_ms()
        job = TrainingJob(
            id=uuid.uuid4().hex,
            project_id=snapshot.project_id,
            version=snapshot.version,
            state="queued",
            rows_total=len(rows),
            format=format,
            created_ms=now,
            updated_ms=now,
        )
        await self._store.insert(job)
        task = asyncio.create_task(self._run(job, snapshot, list(rows), features))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return job

    async def get(self, project_id: str, job_id: str) -> TrainingJob:
        """Returns the project's job (a job whose runner died shows `failed`).

        Raises TrainingJobNotFound."""
        job = await self._store.get(project_id, job_id)
        if job is None:
            raise TrainingJobNotFound(f"no training-set job {job_id} in project {project_id}")
        if job.state in ("queued", "running") and job.updated_ms < self._now_ms() - self._stale_ms:
            await self._fail_stale()
            job = await self._store.get(project_id, job_id) or job
        return job

    async def result(self, project_id: str, job_id: str) -> tuple[TrainingJob, Path]:
        """Returns a succeeded job and its answer's file.

        Raises TrainingJobNotFound, TrainingJobNotFinished."""
        job = await self.get(project_id, job_id)
        path = self.result_path(job)
        if job.state != "succeeded" or not path.exists():
            raise TrainingJobNotFinished(f"training-set job {job_id} is {job.state}")
        return job, path

    async def _run(
        self,
        job: TrainingJob,
        snapshot: ConfigSnapshot,
        rows: list[TrainingRow],
        features: Sequence[str] | None,
    ) -> None:
        beat = asyncio.create_task(self._heartbeat(job.id))
        try:
            async with self._one_at_a_time:
                await self._store.update(
                    job.id, {"state": "running", "updated_ms": self._now_ms()}, only_active=True
                )

                async def progress(done: int) -> None:
                    changes = {"rows_done": done, "updated_ms": self._now_ms()}
                    await self._store.update(job.id, changes, only_active=True)

                answer = await self._training.build(
                    snapshot, rows, features, max_rows=JOB_MAX_ROWS, progress=progress
                )
                path = self.result_path(job)
                partial = path.with_suffix(".partial")
                # Formatting a million rows takes seconds: not on the event loop.
                await asyncio.to_thread(_write, answer, job.format, partial)
                partial.replace(path)
                await self._store.update(
                    job.id,
                    {"state": "succeeded", "rows_done": len(rows), "updated_ms": self._now_ms()},
                    only_active=True,
                )
        except asyncio.CancelledError:
            await self._finish_failed(job.id, "the process running this job was stopped")
            raise
        except Exception as exc:  # the job reports any failure; the process goes on
            logger.exception("training job failed", extra={"job_id": job.id})
            await self._finish_failed(job.id, f"{type(exc).__name__}: {exc}")
        finally:
            beat.cancel()

    async def _finish_failed(self, job_id: str, error: str) -> None:
        try:
            changes = {"state": "failed", "error": error[:500], "updated_ms": self._now_ms()}
            await self._store.update(job_id, changes, only_active=True)
        except Exception:  # the store is down: the heartbeat stops, so it goes stale
            logger.exception("could not mark the training job failed", extra={"job_id": job_id})

    async def _heartbeat(self, job_id: str) -> None:
        while True:
            await asyncio.sleep(self._stale_ms / 3000)
            try:
                await self._store.update(job_id, {"updated_ms": self._now_ms()}, only_active=True)
            except Exception:  # a missed beat is retried; too many and the job goes stale
                logger.warning("training job heartbeat failed", extra={"job_id": job_id})


def training_jobs_startup(stale_after_s: float, chunk_users: int) -> StartupHook:
    """Returns the start-up hook that opens the job store and starts `TrainingJobs` in
    `resources.training_jobs` (left None without an event archive)."""

    async def start(resources: Resources, stack: AsyncExitStack) -> None:
        if not isinstance(resources.analytics, ClickHouseClientSink):
            return
        backends = resources.settings.backends
        store = make_training_job_store(backends)
        await store.initialize()
        stack.push_async_callback(store.close)
        jobs = TrainingJobs(
            store,
            TrainingSetService(resources.analytics, chunk_users=chunk_users),
            backends.data_dir / "training-jobs",
            stale_after_s=stale_after_s,
        )
        await jobs.start()
        stack.push_async_callback(jobs.close)
        resources.training_jobs = jobs

    return start
