"""Training-set jobs' state, in the config store's database: MongoDB (or FerretDB, the
`training_jobs` collection) or the SQLite file (`training_jobs` table).

One document per job, changed only by single-document writes (FerretDB has no
transactions) and never expired by the database (FerretDB has no TTL indexes). The
process running a job writes its progress and a heartbeat (`updated_ms`) every few
seconds; a queued or running job whose heartbeat is older than the stale limit lost its
runner (the process died) and is marked failed by `fail_stale`, which any process may
call (the API does at start-up and when a job is read).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel
from pymongo import ASCENDING, AsyncMongoClient
from pymongo.errors import PyMongoError

from app.core.settings import BackendSettings
from app.db.config_store import ConfigStoreUnavailable
from app.db.mongodb import _FAIL_FAST, _is_outage

JobState = Literal["queued", "running", "succeeded", "failed"]
ACTIVE: tuple[JobState, ...] = ("queued", "running")
R = TypeVar("R")


class TrainingJob(BaseModel):
    """One training-set job. `rows_done` grows by chunks of users up to `rows_total`."""

    id: str
    project_id: str
    version: int
    state: JobState
    rows_total: int
    rows_done: int = 0
    format: Literal["csv", "parquet"] = "csv"
    created_ms: int
    updated_ms: int
    error: str | None = None


class TrainingJobStore(ABC):
    """Where jobs' state lives (see the module docstring)."""

    async def initialize(self) -> None:
        """Connects and creates the collection's indexes or the table."""

    async def close(self) -> None:
        """Releases the connection."""

    @abstractmethod
    async def insert(self, job: TrainingJob) -> None:
        """Stores a new job."""

    @abstractmethod
    async def get(self, project_id: str, job_id: str) -> TrainingJob | None:
        """Returns the project's job, or None (another project's job is None too)."""

    @abstractmethod
    async def update(self, job_id: str, changes: dict[str, Any], *, only_active: bool) -> bool:
        """Sets `changes` on the job; with `only_active`, only while it is queued or
        running (a job marked failed stays failed). Returns whether it changed."""

    @abstractmethod
    async def fail_stale(self, before_ms: int, error: str, now_ms: int) -> int:
        """Marks failed every queued or running job whose heartbeat is older than
        `before_ms`. Returns how many."""


@contextmanager
def _outages_as_unavailable() -> Iterator[None]:
    """An outage of MongoDB is ConfigStoreUnavailable (503), as in the config store."""
    try:
        yield
    except PyMongoError as exc:
        if _is_outage(exc):
            raise ConfigStoreUnavailable(f"mongodb: {type(exc).__name__}: {exc}") from exc
        raise


class MongoTrainingJobStore(TrainingJobStore):
    """Jobs in the `training_jobs` collection of `settings.mongodb_database`."""

    def __init__(self, settings: BackendSettings) -> None:
        self._url = settings.mongodb_url
        self._db_name = settings.mongodb_database
        self._client: AsyncMongoClient[dict[str, Any]] | None = None

    @property
    def _jobs(self) -> Any:
        if self._client is None:
            raise RuntimeError("MongoTrainingJobStore.initialize() was not called")
        return self._client[self._db_name]["training_jobs"]

    async def initialize(self) -> None:
        if self._client is None:
            self._client = AsyncMongoClient(self._url, **_FAIL_FAST)
        await self._jobs.create_index([("state", ASCENDING), ("updated_ms", ASCENDING)])

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()

    async def insert(self, job: TrainingJob) -> None:
        data = job.model_dump()
        data["_id"] = data.pop("id")
        with _outages_as_unavailable():
            await self._jobs.insert_one(data)

    async def get(self, project_id: str, job_id: str) -> TrainingJob | None:
        with _outages_as_unavailable():
            raw = await self._jobs.find_one({"_id": job_id, "project_id": project_id})
        if raw is None:
            return None
        raw["id"] = raw.pop("_id")
        return TrainingJob.model_validate(raw)

    async def update(self, job_id: str, changes: dict[str, Any], *, only_active: bool) -> bool:
        query: dict[str, Any] = {"_id": job_id}
        if only_active:
            query["state"] = {"$in": list(ACTIVE)}
        with _outages_as_unavailable():
            result = await self._jobs.update_one(query, {"$set": changes})
        return bool(result.matched_count)

    async def fail_stale(self, before_ms: int, error: str, now_ms: int) -> int:
        with _outages_as_unavailable():
            result = await self._jobs.update_many(
                {"state": {"$in": list(ACTIVE)}, "updated_ms": {"$lt": before_ms}},
                {"$set": {"state": "failed", "error": error, "updated_ms": now_ms}},
            )
        return int(result.modified_count)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS training_jobs (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL,
    state TEXT NOT NULL,
    updated_ms INTEGER NOT NULL,
    doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS training_jobs_stale ON training_jobs (state, updated_ms);
"""


class SQLiteTrainingJobStore(TrainingJobStore):
    """Jobs in the `training_jobs` table of `settings.data_dir / "config.sqlite3"` (the
    config store's file), on one worker thread as the config store does."""

    def __init__(self, settings: BackendSettings) -> None:
        self._path: Path = settings.data_dir / "config.sqlite3"
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-jobs")
        self._conn: sqlite3.Connection | None = None

    async def _run(self, fn: Callable[[sqlite3.Connection], R]) -> R:
        def call() -> R:
            if self._conn is None:
                self._path.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA busy_timeout=5000")
                conn.executescript(_SCHEMA)
                self._conn = conn
            return fn(self._conn)

        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def initialize(self) -> None:
        await self._run(lambda conn: None)

    async def close(self) -> None:
        def shut(conn: sqlite3.Connection) -> None:
            conn.close()
            self._conn = None

        if self._conn is not None:
            await self._run(shut)
        self._executor.shutdown(wait=True)

    async def insert(self, job: TrainingJob) -> None:
        await self._run(
            lambda conn: conn.execute(
                "INSERT INTO training_jobs (id, project_id, state, updated_ms, doc) "
                "VALUES (?, ?, ?, ?, ?)",
                (job.id, job.project_id, job.state, job.updated_ms, job.model_dump_json()),
            )
        )

    async def get(self, project_id: str, job_id: str) -> TrainingJob | None:
        row = await self._run(
            lambda conn: conn.execute(
                "SELECT doc FROM training_jobs WHERE id = ? AND project_id = ?",
                (job_id, project_id),
            ).fetchone()
        )
        return None if row is None else TrainingJob.model_validate_json(row[0])

    async def update(self, job_id: str, changes: dict[str, Any], *, only_active: bool) -> bool:
        def write(conn: sqlite3.Connection) -> bool:
            # One thread runs every statement of this store, and BEGIN IMMEDIATE keeps
            # another process from writing between the read and the write.
            conn.execute("BEGIN IMMEDIATE")
            try:
                row = conn.execute("SELECT doc FROM training_jobs WHERE id = ?", (job_id,))
                found = row.fetchone()
                if found is None:
                    return False
                doc = json.loads(found[0])
                if only_active and doc["state"] not in ACTIVE:
                    return False
                doc.update(changes)
                conn.execute(
                    "UPDATE training_jobs SET state = ?, updated_ms = ?, doc = ? WHERE id = ?",
                    (doc["state"], doc["updated_ms"], json.dumps(doc), job_id),
                )
                return True
            finally:
                conn.execute("COMMIT")

        return await self._run(write)

    async def fail_stale(self, before_ms: int, error: str, now_ms: int) -> int:
        def write(conn: sqlite3.Connection) -> int:
            conn.execute("BEGIN IMMEDIATE")
            try:
                stale = conn.execute(
                    "SELECT id, doc FROM training_jobs WHERE state IN ('queued', 'running') "
                    "AND updated_ms < ?",
                    (before_ms,),
                ).fetchall()
                for job_id, raw in stale:
                    doc = json.loads(raw) | {
                        "state": "failed",
                        "error": error,
                        "updated_ms": now_ms,
                    }
                    conn.execute(
                        "UPDATE training_jobs SET state = 'failed', updated_ms = ?, doc = ? "
                        "WHERE id = ?",
                        (now_ms, json.dumps(doc), job_id),
                    )
                return len(stale)
            finally:
                conn.execute("COMMIT")

        return await self._run(write)


def make_training_job_store(settings: BackendSettings) -> TrainingJobStore:
    """Returns the job store beside the configured config store (mongodb or sqlite)."""
    if settings.config_store == "sqlite":
        return SQLiteTrainingJobStore(settings)
    return MongoTrainingJobStore(settings)
