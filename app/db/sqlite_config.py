"""The config store on a SQLite file, for standalone: same contract as MongoDB.

One table per collection. Each row holds the document as JSON plus the columns that are
filtered, sorted or unique; the unique keys are real UNIQUE constraints, so a name clash
or a second deploy of one version fails in the database, not in a check-then-write race.

sqlite3 is synchronous: every statement runs on one dedicated worker thread (which also
serialises them, so a read-modify-write on that thread is atomic for this process), and
the event loop only awaits it. WAL lets readers in other processes work during a write.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Generic, TypeVar

from app.core.settings import BackendSettings
from app.db.config_common import is_object_id, normalize_times, require_str, to_millis
from app.db.config_store import ConfigStore, DuplicateKey
from app.db.documents import (
    FEATURE_DOCUMENT,
    DeploymentDocument,
    FeatureDocument,
    PipelineDocument,
)
from app.schemas.deployment import BackfillProgress, DeploymentStatus
from app.schemas.pipeline import Category, PipelineStatus

R = TypeVar("R")
D = TypeVar("D", PipelineDocument, FeatureDocument, DeploymentDocument)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pipelines (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    category TEXT NOT NULL,
    revision INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    doc TEXT NOT NULL,
    UNIQUE (project_id, name)
);
CREATE INDEX IF NOT EXISTS pipelines_order ON pipelines (project_id, created_ms, id);
CREATE INDEX IF NOT EXISTS pipelines_status ON pipelines (project_id, status);
CREATE TABLE IF NOT EXISTS features (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL,
    pipeline_id TEXT NOT NULL,
    name TEXT NOT NULL,
    enabled INTEGER NOT NULL,
    revision INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    doc TEXT NOT NULL,
    UNIQUE (project_id, name)
);
CREATE INDEX IF NOT EXISTS features_order ON features (project_id, created_ms, id);
CREATE INDEX IF NOT EXISTS features_enabled ON features (project_id, enabled);
CREATE INDEX IF NOT EXISTS features_pipeline ON features (project_id, pipeline_id);
CREATE TABLE IF NOT EXISTS deployments (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    status TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    doc TEXT NOT NULL,
    UNIQUE (project_id, version)
);
CREATE INDEX IF NOT EXISTS deployments_status ON deployments (status, project_id);
"""


def _dup_key(exc: sqlite3.IntegrityError, default: str) -> DuplicateKey:
    # "UNIQUE constraint failed: pipelines.id" is the primary key; anything else is the
    # table's one business key.
    return DuplicateKey("id" if str(exc).endswith(".id") else default)


@dataclass(frozen=True)
class _Table(Generic[D]):
    """One table of `_SCHEMA`: how to read the document its `doc` column holds, the columns
    copied out of a document besides id, project_id and doc (in the schema's order), and
    the business key that a UNIQUE violation other than the id's is reported as."""

    name: str
    parse: Callable[[str], D]
    columns: Callable[[D], dict[str, Any]]
    key: str


def _pipeline_columns(doc: PipelineDocument) -> dict[str, Any]:
    return {
        "name": doc.name,
        "status": doc.status,
        "category": doc.category,
        "revision": doc.revision,
        "created_ms": to_millis(doc.created_at),
    }


def _feature_columns(doc: FeatureDocument) -> dict[str, Any]:
    return {
        "pipeline_id": doc.pipeline_id,
        "name": doc.name,
        "enabled": int(doc.enabled),
        "revision": doc.revision,
        "created_ms": to_millis(doc.created_at),
    }


def _deployment_columns(doc: DeploymentDocument) -> dict[str, Any]:
    return {"version": doc.version, "status": doc.status, "created_ms": to_millis(doc.created_at)}


_PIPELINES = _Table("pipelines", PipelineDocument.model_validate_json, _pipeline_columns, "name")
_FEATURES = _Table("features", FEATURE_DOCUMENT.validate_json, _feature_columns, "name")
_DEPLOYMENTS = _Table(
    "deployments", DeploymentDocument.model_validate_json, _deployment_columns, "version"
)


class SQLiteConfigStore(ConfigStore):
    """ConfigStore in `settings.data_dir / "config.sqlite3"`."""

    def __init__(self, settings: BackendSettings) -> None:
        self._path: Path = settings.data_dir / "config.sqlite3"
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None

    # -- lifetime ----------------------------------------------------------------------
    async def initialize(self) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-config")
        await self._run(self._open)

    def _open(self) -> None:
        if self._conn is not None:
            return
        self._path.parent.mkdir(parents=True, exist_ok=True)
        # Autocommit: every method is one statement, or an explicit BEGIN IMMEDIATE block.
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=5000")
        conn.executescript(_SCHEMA)
        self._conn = conn

    async def close(self) -> None:
        if self._executor is None:
            return
        await self._run(self._close_conn)
        executor, self._executor = self._executor, None
        executor.shutdown(wait=False)

    def _close_conn(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def ping(self) -> None:
        await self._run(lambda: self._db.execute("SELECT 1").fetchone())

    async def _run(self, fn: Callable[..., R], *args: Any) -> R:
        if self._executor is None:
            raise RuntimeError("SQLiteConfigStore.initialize() was not called")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("SQLiteConfigStore.initialize() was not called")
        return self._conn

    # -- helpers (run on the worker thread) ----------------------------------------------
    def _page(
        self, table: str, where: str, params: list[Any], order: str, limit: int | None, offset: int
    ) -> tuple[list[str], int]:
        # `table`, `where` and `order` are literals of this module; values are parameters.
        total = self._db.execute(f"SELECT COUNT(*) FROM {table} WHERE {where}", params)  # noqa: S608
        count = int(total.fetchone()[0])
        sql = f"SELECT doc FROM {table} WHERE {where} ORDER BY {order} LIMIT ? OFFSET ?"  # noqa: S608
        rows = self._db.execute(sql, [*params, -1 if limit is None else limit, max(offset, 0)])
        return [r[0] for r in rows.fetchall()], count

    def _get(self, table: str, project_id: str, doc_id: str) -> str | None:
        if not is_object_id(doc_id):
            return None
        row = self._db.execute(
            f"SELECT doc FROM {table} WHERE id = ? AND project_id = ?",  # noqa: S608
            (doc_id, require_str(project_id, "project_id")),
        ).fetchone()
        return str(row[0]) if row is not None else None

    def _delete(self, table: str, project_id: str, doc_id: str) -> bool:
        if not is_object_id(doc_id):
            return False
        cur = self._db.execute(
            f"DELETE FROM {table} WHERE id = ? AND project_id = ?",  # noqa: S608
            (doc_id, require_str(project_id, "project_id")),
        )
        return cur.rowcount == 1

    def _execute_unique(self, sql: str, params: Sequence[Any], key: str) -> int:
        try:
            return self._db.execute(sql, params).rowcount
        except sqlite3.IntegrityError as exc:
            raise _dup_key(exc, key) from exc

    # -- one table's documents (awaited on the event loop) ------------------------------
    async def _list_docs(
        self,
        table: _Table[D],
        where: str,
        params: list[Any],
        order: str,
        limit: int | None,
        offset: int,
    ) -> tuple[list[D], int]:
        rows, total = await self._run(self._page, table.name, where, params, order, limit, offset)
        return [table.parse(r) for r in rows], total

    async def _get_doc(self, table: _Table[D], project_id: str, doc_id: str) -> D | None:
        raw = await self._run(self._get, table.name, project_id, doc_id)
        return table.parse(raw) if raw is not None else None

    async def _insert_doc(self, table: _Table[D], doc: D) -> None:
        doc = normalize_times(doc)
        row: dict[str, Any] = {"id": doc.id, "project_id": doc.project_id, **table.columns(doc)}
        row["doc"] = doc.model_dump_json()
        marks = ", ".join("?" for _ in row)
        # Table and column names are literals of this module; values are parameters.
        sql = f"INSERT INTO {table.name} ({', '.join(row)}) VALUES ({marks})"  # noqa: S608
        await self._run(self._execute_unique, sql, list(row.values()), table.key)

    async def _replace_doc(self, table: _Table[D], doc: D, expected_revision: int) -> bool:
        if not is_object_id(doc.id):
            return False
        doc = normalize_times(doc)
        row: dict[str, Any] = {**table.columns(doc), "doc": doc.model_dump_json()}
        assignments = ", ".join(f"{column} = ?" for column in row)
        sql = (
            f"UPDATE {table.name} SET {assignments} "  # noqa: S608
            "WHERE id = ? AND project_id = ? AND revision = ?"
        )
        params = [
            *row.values(),
            doc.id,
            require_str(doc.project_id, "project_id"),
            int(expected_revision),
        ]
        return await self._run(self._execute_unique, sql, params, table.key) == 1

    # -- pipelines ---------------------------------------------------------------------
    async def list_pipelines(
        self,
        project_id: str,
        *,
        status: PipelineStatus | None = None,
        category: Category | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> tuple[list[PipelineDocument], int]:
        where, params = "project_id = ?", [require_str(project_id, "project_id")]
        if status is not None:
            where, params = f"{where} AND status = ?", [*params, status]
        if category is not None:
            where, params = f"{where} AND category = ?", [*params, category]
        return await self._list_docs(_PIPELINES, where, params, "created_ms, id", limit, offset)

    async def get_pipeline(self, project_id: str, pipeline_id: str) -> PipelineDocument | None:
        return await self._get_doc(_PIPELINES, project_id, pipeline_id)

    async def insert_pipeline(self, doc: PipelineDocument) -> None:
        await self._insert_doc(_PIPELINES, doc)

    async def replace_pipeline(self, doc: PipelineDocument, expected_revision: int) -> bool:
        return await self._replace_doc(_PIPELINES, doc, expected_revision)

    async def delete_pipeline(self, project_id: str, pipeline_id: str) -> bool:
        return await self._run(self._delete, _PIPELINES.name, project_id, pipeline_id)

    # -- features ----------------------------------------------------------------------
    async def list_features(
        self,
        project_id: str,
        *,
        pipeline_id: str | None = None,
        enabled: bool | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> tuple[list[FeatureDocument], int]:
        where = "project_id = ?"
        params: list[Any] = [require_str(project_id, "project_id")]
        if pipeline_id is not None:
            if not is_object_id(pipeline_id):
                return [], 0
            where, params = f"{where} AND pipeline_id = ?", [*params, pipeline_id]
        if enabled is not None:
            where, params = f"{where} AND enabled = ?", [*params, int(bool(enabled))]
        return await self._list_docs(_FEATURES, where, params, "created_ms, id", limit, offset)

    async def get_feature(self, project_id: str, feature_id: str) -> FeatureDocument | None:
        return await self._get_doc(_FEATURES, project_id, feature_id)

    async def insert_feature(self, doc: FeatureDocument) -> None:
        await self._insert_doc(_FEATURES, doc)

    async def replace_feature(self, doc: FeatureDocument, expected_revision: int) -> bool:
        return await self._replace_doc(_FEATURES, doc, expected_revision)

    async def delete_feature(self, project_id: str, feature_id: str) -> bool:
        return await self._run(self._delete, _FEATURES.name, project_id, feature_id)

    async def delete_features_of_pipeline(self, project_id: str, pipeline_id: str) -> int:
        if not is_object_id(pipeline_id):
            return 0
        sql = "DELETE FROM features WHERE project_id = ? AND pipeline_id = ?"
        params = (require_str(project_id, "project_id"), pipeline_id)
        return await self._run(lambda: self._db.execute(sql, params).rowcount)

    # -- deployments -------------------------------------------------------------------
    async def insert_deployment(self, doc: DeploymentDocument) -> None:
        await self._insert_doc(_DEPLOYMENTS, doc)

    async def update_deployment_status(
        self,
        project_id: str,
        deployment_id: str,
        status: DeploymentStatus,
        *,
        deployed_at: datetime | None = None,
        error: str | None = None,
    ) -> None:
        if not is_object_id(deployment_id):
            return
        changes: dict[str, Any] = {"status": status}
        if deployed_at is not None:
            changes["deployed_at"] = deployed_at
        if error is not None:
            changes["error"] = error
        await self._run(self._update_deployment, project_id, deployment_id, changes)

    def _update_deployment(
        self, project_id: str, deployment_id: str, changes: dict[str, Any]
    ) -> None:
        # Read-modify-write inside one IMMEDIATE transaction: no other writer (this
        # process's thread or another process) can slip in between.
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            raw = self._get(_DEPLOYMENTS.name, project_id, deployment_id)
            if raw is not None:
                doc = _DEPLOYMENTS.parse(raw)
                doc = normalize_times(doc.model_copy(update=changes))
                db.execute(
                    "UPDATE deployments SET status = ?, doc = ? WHERE id = ?",
                    (doc.status, doc.model_dump_json(), doc.id),
                )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    async def update_backfill(
        self, project_id: str, deployment_id: str, progress: BackfillProgress
    ) -> bool:
        if not is_object_id(deployment_id):
            return False
        return await self._run(self._update_backfill, project_id, deployment_id, progress)

    def _update_backfill(
        self, project_id: str, deployment_id: str, progress: BackfillProgress
    ) -> bool:
        db = self._db
        db.execute("BEGIN IMMEDIATE")  # read-modify-write, as `_update_deployment`
        try:
            raw = self._get(_DEPLOYMENTS.name, project_id, deployment_id)
            doc = _DEPLOYMENTS.parse(raw) if raw is not None else None
            backfilling = doc is not None and doc.status == "backfilling"
            if doc is not None and backfilling:
                doc = doc.model_copy(update={"backfill": normalize_times(progress)})
                db.execute(
                    "UPDATE deployments SET doc = ? WHERE id = ?", (doc.model_dump_json(), doc.id)
                )
            db.execute("COMMIT")
            return backfilling
        except BaseException:
            db.execute("ROLLBACK")
            raise

    async def deployments_in_status(self, status: DeploymentStatus) -> list[DeploymentDocument]:
        sql = "SELECT doc FROM deployments WHERE status = ? ORDER BY created_ms, id"
        params = (require_str(status, "status"),)
        rows = await self._run(lambda: self._db.execute(sql, params).fetchall())
        return [_DEPLOYMENTS.parse(r[0]) for r in rows]

    async def mark_rolled_back(self, project_id: str, after_version: int) -> int:
        sql = (
            "UPDATE deployments SET status = 'rolled_back', "
            "doc = json_set(doc, '$.status', 'rolled_back') "
            "WHERE project_id = ? AND version > ? AND status = 'success'"
        )
        params = (require_str(project_id, "project_id"), int(after_version))
        return await self._run(lambda: self._db.execute(sql, params).rowcount)

    async def list_deployments(
        self, project_id: str, *, limit: int | None = None, offset: int = 0
    ) -> tuple[list[DeploymentDocument], int]:
        params: list[Any] = [require_str(project_id, "project_id")]
        return await self._list_docs(
            _DEPLOYMENTS, "project_id = ?", params, "version DESC", limit, offset
        )

    async def get_deployment(
        self, project_id: str, deployment_id: str
    ) -> DeploymentDocument | None:
        return await self._get_doc(_DEPLOYMENTS, project_id, deployment_id)

    async def latest_deployment(
        self, project_id: str, statuses: Sequence[DeploymentStatus] = ("success",)
    ) -> DeploymentDocument | None:
        wanted = [require_str(s, "status") for s in statuses]
        if not wanted:
            return None
        marks = ", ".join("?" for _ in wanted)
        sql = (
            f"SELECT doc FROM deployments WHERE project_id = ? AND status IN ({marks}) "  # noqa: S608
            "ORDER BY version DESC LIMIT 1"
        )
        params = [require_str(project_id, "project_id"), *wanted]
        row = await self._run(lambda: self._db.execute(sql, params).fetchone())
        return _DEPLOYMENTS.parse(row[0]) if row is not None else None

    async def deployed_projects(self) -> list[str]:
        sql = "SELECT DISTINCT project_id FROM deployments WHERE status = 'success' ORDER BY 1"
        rows = await self._run(lambda: self._db.execute(sql).fetchall())
        return [str(r[0]) for r in rows]
