"""The config store on MongoDB through PyMongo's async client (Motor is deprecated).

Also runs on FerretDB 1.x (SQLite handler), which the test suite uses: no multi-document
transactions, no TTL indexes, a subset of the aggregation language. So every write is a
single-document operation settled by a unique index or a revision check in the filter
(guarded by a revision claim, see `_claim`: FerretDB's updates are not atomic), and reads
are plain `find`/`count_documents`/`distinct`.

`_id` is a real ObjectId, and so is a feature's `pipeline_id`. Ids are checked to be 24
hex characters before they become ObjectIds; anything else is "not found", so no
operator can reach a query through an id. Datetimes come back tz-aware in UTC.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from bson import ObjectId
from pymongo import ASCENDING, DESCENDING, AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import ConnectionFailure, DuplicateKeyError, OperationFailure, PyMongoError

from app.core.settings import BackendSettings
from app.db.config_common import is_object_id, normalize_times, require_str, to_storage_time
from app.db.config_store import ConfigStore, ConfigStoreUnavailable, DuplicateKey
from app.db.documents import (
    FEATURE_DOCUMENT,
    AggregateFeatureDocument,
    DeploymentDocument,
    DerivedFeatureDocument,
    FeatureDocument,
    PipelineDocument,
)
from app.schemas.deployment import BackfillProgress, DeploymentStatus
from app.schemas.pipeline import Category, PipelineStatus

Doc = dict[str, Any]
_S = TypeVar("_S", bound=ConfigStore)

# A revision claim older than this was left by a writer that died mid-replace.
CLAIM_STALE_AFTER = timedelta(seconds=30)

# Every list is ordered by a unique key too, so pages never overlap or skip.
_DRAFT_ORDER = [("created_at", ASCENDING), ("_id", ASCENDING)]


def _is_duplicate(exc: OperationFailure) -> bool:
    # FerretDB 1.x (SQLite handler) answers an update that breaks a unique index with
    # code 1 (InternalError) and SQLite's message instead of E11000.
    return isinstance(exc, DuplicateKeyError) or "UNIQUE constraint failed" in str(exc)


def _dup_key(exc: OperationFailure, default: str) -> DuplicateKey:
    # MongoDB names the violated index in `keyPattern`; FerretDB only in the message.
    # Each collection has one unique key besides _id, so anything else is `default`.
    pattern = (exc.details or {}).get("keyPattern")
    if isinstance(pattern, Mapping) and list(pattern) == ["_id"]:
        return DuplicateKey("id")
    message = str(exc)
    if pattern is None and ("index: _id_ " in message or "_id_'" in message):
        return DuplicateKey("id")
    return DuplicateKey(default)


def _oid(value: str) -> ObjectId | None:
    return ObjectId(value) if is_object_id(value) else None


def _to_mongo(doc: PipelineDocument | FeatureDocument | DeploymentDocument) -> Doc:
    data = normalize_times(doc).model_dump(mode="python", exclude={"id"})
    data["_id"] = ObjectId(doc.id)
    if isinstance(doc, AggregateFeatureDocument | DerivedFeatureDocument):
        if not is_object_id(doc.pipeline_id):
            raise ValueError(f"pipeline_id {doc.pipeline_id!r} is not an ObjectId")
        data["pipeline_id"] = ObjectId(doc.pipeline_id)
    return data


def _from_mongo(raw: Doc) -> Doc:
    data = dict(raw)
    data["id"] = str(data.pop("_id"))
    if isinstance(data.get("pipeline_id"), ObjectId):
        data["pipeline_id"] = str(data["pipeline_id"])
    return data


# Fail fast and heal (issue 10). The config API wedged for good after a FerretDB restart
# while /ready was polled (reproduced: 16 pollers, FerretDB stopped and started): every
# later request hung without PyMongo even connecting to the server, and uvicorn's
# shutdown waited for them. /ready's deadline (asyncio.wait_for) cancels pings inside
# PyMongo's pool and topology waits; afterwards some of those waits never ended.
# Per-step timeouts alone did not prevent it (wedged in 1 of 2 runs); shielding did. So:
# - every operation runs shielded from its caller's cancellation (`_guarded`): a request
#   deadline or shutdown abandons the wait, never PyMongo's bookkeeping;
# - every step of an operation has a deadline (server selection, pool wait, connect,
#   each read), so a shielded operation ends by itself, and the caller stops waiting
#   after `MONGODB_CALL_BUDGET_S` (2 s) whatever the steps add up to (a server that
#   refuses or one that stalls: FerretDB stopping held reads ~4 s): 503
#   ConfigStoreUnavailable, Retry-After.
#   Not PyMongo's own `timeoutMS`: it sends `maxTimeMS`, which FerretDB 1.x refuses on
#   some commands (distinct), and makes server selection wait the whole budget;
# - the pool reconnects by itself once the server is back.
# Start-up (`initialize`, index creation) waits for its steps' limits only.
_FAIL_FAST: dict[str, Any] = {
    "serverSelectionTimeoutMS": 1000,
    "connectTimeoutMS": 1000,
    "waitQueueTimeoutMS": 2000,
    "socketTimeoutMS": 5000,
}


def _is_outage(exc: PyMongoError) -> bool:
    # ConnectionFailure covers AutoReconnect, NetworkTimeout and server selection; any
    # other timeout (the pool's wait queue) is an outage too. The rest is about the data.
    return isinstance(exc, ConnectionFailure) or exc.timeout


def _guarded(fn: Callable[..., Awaitable[Any]], bounded: bool) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(fn)
    async def call(self: MongoConfigStore, *args: Any, **kwargs: Any) -> Any:
        budget_s = self.call_budget_s if bounded else None
        args = (self, *args)
        try:
            return await asyncio.wait_for(asyncio.shield(fn(*args, **kwargs)), budget_s)
        except TimeoutError as exc:
            raise ConfigStoreUnavailable(f"mongodb: no answer within {budget_s:g} s") from exc
        except PyMongoError as exc:
            if _is_outage(exc):
                raise ConfigStoreUnavailable(f"mongodb: {type(exc).__name__}: {exc}") from exc
            raise

    return call


def _outages_as_unavailable(cls: type[_S]) -> type[_S]:
    """Guards every public coroutine of the ConfigStore interface (see `_guarded`)."""
    for name, member in vars(ConfigStore).items():
        if not name.startswith("_") and name != "close" and inspect.iscoroutinefunction(member):
            setattr(cls, name, _guarded(getattr(cls, name), bounded=name != "initialize"))
    return cls


@_outages_as_unavailable
class MongoConfigStore(ConfigStore):
    """ConfigStore on the database `settings.mongodb_database`."""

    def __init__(self, settings: BackendSettings) -> None:
        self._url = settings.mongodb_url
        self._db_name = settings.mongodb_database
        self.call_budget_s = settings.mongodb_call_budget_s
        self._client: AsyncMongoClient[Doc] | None = None

    # -- lifetime ----------------------------------------------------------------------
    async def initialize(self) -> None:
        if self._client is None:
            # tz_aware: BSON dates come back as UTC-aware datetimes, equal to what was written.
            self._client = AsyncMongoClient(self._url, tz_aware=True, tzinfo=UTC, **_FAIL_FAST)
        await self._create_indexes()

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()

    async def ping(self) -> None:
        await self._db.command("ping")

    @property
    def _db(self) -> AsyncDatabase[Doc]:
        if self._client is None:
            raise RuntimeError("MongoConfigStore.initialize() was not called")
        return self._client[self._db_name]

    @property
    def _pipelines(self) -> AsyncCollection[Doc]:
        return self._db["pipelines"]

    @property
    def _features(self) -> AsyncCollection[Doc]:
        return self._db["features"]

    @property
    def _deployments(self) -> AsyncCollection[Doc]:
        return self._db["deployments"]

    @property
    def _claims(self) -> AsyncCollection[Doc]:
        return self._db["revision_claims"]

    async def _create_indexes(self) -> None:
        p, f, d = self._pipelines, self._features, self._deployments
        await p.create_index([("project_id", ASCENDING)])
        await p.create_index([("project_id", ASCENDING), ("status", ASCENDING)])
        await p.create_index([("project_id", ASCENDING), ("name", ASCENDING)], unique=True)
        await f.create_index([("project_id", ASCENDING)])
        await f.create_index([("project_id", ASCENDING), ("enabled", ASCENDING)])
        await f.create_index([("project_id", ASCENDING), ("name", ASCENDING)], unique=True)
        await f.create_index([("project_id", ASCENDING), ("pipeline_id", ASCENDING)])
        await d.create_index([("project_id", ASCENDING), ("created_at", DESCENDING)])
        await d.create_index([("project_id", ASCENDING), ("version", ASCENDING)], unique=True)

    # -- helpers -----------------------------------------------------------------------
    @staticmethod
    async def _page(
        coll: AsyncCollection[Doc],
        query: Doc,
        order: list[tuple[str, int]],
        limit: int | None,
        offset: int,
    ) -> tuple[list[Doc], int]:
        cursor = coll.find(query).sort(order).skip(max(offset, 0))
        if limit is not None:
            cursor = cursor.limit(limit)
        rows = [_from_mongo(r) for r in await cursor.to_list()]
        return rows, await coll.count_documents(query)

    @staticmethod
    async def _get(coll: AsyncCollection[Doc], project_id: str, doc_id: str) -> Doc | None:
        oid = _oid(doc_id)
        if oid is None:
            return None
        raw = await coll.find_one({"_id": oid, "project_id": require_str(project_id, "project_id")})
        return _from_mongo(raw) if raw is not None else None

    @staticmethod
    async def _insert(
        coll: AsyncCollection[Doc],
        doc: PipelineDocument | FeatureDocument | DeploymentDocument,
        key: str,
    ) -> None:
        data = _to_mongo(doc)
        try:
            await coll.insert_one(data)
        except OperationFailure as exc:
            if not _is_duplicate(exc):
                raise
            dup = _dup_key(exc, key)
            # FerretDB's E11000 does not say which index; ids are fresh ObjectIds, so
            # an existing one means the id clashed, not the business key.
            if dup.key != "id" and await coll.find_one({"_id": data["_id"]}, projection=[]):
                dup = DuplicateKey("id")
            raise dup from exc

    async def _replace(
        self,
        coll: AsyncCollection[Doc],
        doc: PipelineDocument | FeatureDocument,
        expected_revision: int,
    ) -> bool:
        oid = _oid(doc.id)
        if oid is None:
            return False
        query = {
            "_id": oid,
            "project_id": require_str(doc.project_id, "project_id"),
            "revision": int(expected_revision),
        }
        claim = await self._claim(coll.name, doc.id, int(expected_revision))
        if claim is None:
            return False
        try:
            result = await coll.replace_one(query, _to_mongo(doc))
        except OperationFailure as exc:
            if not _is_duplicate(exc):
                raise
            raise _dup_key(exc, "name") from exc
        finally:
            await self._claims.delete_one({"_id": claim})
        return result.matched_count == 1

    async def _claim(self, collection: str, doc_id: str, revision: int) -> str | None:
        """Returns the claim id if this writer may replace `doc_id` at `revision`, None if
        another writer holds that claim.

        FerretDB 1.x evaluates an update's filter on a read and writes afterwards, so two
        concurrent `replace_one(..., revision: N)` calls can both match and both write.
        An insert into a unique `_id` is atomic on every server, so writers first claim
        `(collection, id, N)`; the holder releases it once its replace is done, and a later
        writer's filter then sees the new revision. A claim left by a writer that died
        before releasing it is taken over once it is older than `CLAIM_STALE_AFTER`.
        """
        claim_id = f"{collection}:{doc_id}:{revision}"
        for _ in range(2):
            now = datetime.now(UTC)
            try:
                await self._claims.insert_one({"_id": claim_id, "at": now})
            except OperationFailure as exc:
                if not _is_duplicate(exc):
                    raise
                stale = {"_id": claim_id, "at": {"$lt": now - CLAIM_STALE_AFTER}}
                if (await self._claims.delete_one(stale)).deleted_count == 0:
                    return None
                continue
            return claim_id
        return None

    @staticmethod
    async def _delete(coll: AsyncCollection[Doc], project_id: str, doc_id: str) -> bool:
        oid = _oid(doc_id)
        if oid is None:
            return False
        query = {"_id": oid, "project_id": require_str(project_id, "project_id")}
        return (await coll.delete_one(query)).deleted_count == 1

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
        query: Doc = {"project_id": require_str(project_id, "project_id")}
        if status is not None:
            query["status"] = require_str(status, "status")
        if category is not None:
            query["category"] = require_str(category, "category")
        rows, total = await self._page(self._pipelines, query, _DRAFT_ORDER, limit, offset)
        return [PipelineDocument.model_validate(r) for r in rows], total

    async def get_pipeline(self, project_id: str, pipeline_id: str) -> PipelineDocument | None:
        raw = await self._get(self._pipelines, project_id, pipeline_id)
        return PipelineDocument.model_validate(raw) if raw is not None else None

    async def insert_pipeline(self, doc: PipelineDocument) -> None:
        await self._insert(self._pipelines, doc, "name")

    async def replace_pipeline(self, doc: PipelineDocument, expected_revision: int) -> bool:
        return await self._replace(self._pipelines, doc, expected_revision)

    async def delete_pipeline(self, project_id: str, pipeline_id: str) -> bool:
        return await self._delete(self._pipelines, project_id, pipeline_id)

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
        query: Doc = {"project_id": require_str(project_id, "project_id")}
        if pipeline_id is not None:
            oid = _oid(pipeline_id)
            if oid is None:
                return [], 0
            query["pipeline_id"] = oid
        if enabled is not None:
            query["enabled"] = bool(enabled)
        rows, total = await self._page(self._features, query, _DRAFT_ORDER, limit, offset)
        return [FEATURE_DOCUMENT.validate_python(r) for r in rows], total

    async def get_feature(self, project_id: str, feature_id: str) -> FeatureDocument | None:
        raw = await self._get(self._features, project_id, feature_id)
        return FEATURE_DOCUMENT.validate_python(raw) if raw is not None else None

    async def insert_feature(self, doc: FeatureDocument) -> None:
        await self._insert(self._features, doc, "name")

    async def replace_feature(self, doc: FeatureDocument, expected_revision: int) -> bool:
        return await self._replace(self._features, doc, expected_revision)

    async def delete_feature(self, project_id: str, feature_id: str) -> bool:
        return await self._delete(self._features, project_id, feature_id)

    async def delete_features_of_pipeline(self, project_id: str, pipeline_id: str) -> int:
        oid = _oid(pipeline_id)
        if oid is None:
            return 0
        query = {"project_id": require_str(project_id, "project_id"), "pipeline_id": oid}
        return (await self._features.delete_many(query)).deleted_count

    # -- deployments -------------------------------------------------------------------
    async def insert_deployment(self, doc: DeploymentDocument) -> None:
        await self._insert(self._deployments, doc, "version")

    async def update_deployment_status(
        self,
        project_id: str,
        deployment_id: str,
        status: DeploymentStatus,
        *,
        deployed_at: datetime | None = None,
        error: str | None = None,
    ) -> None:
        oid = _oid(deployment_id)
        if oid is None:
            return
        changes: Doc = {"status": require_str(status, "status")}
        if deployed_at is not None:
            changes["deployed_at"] = to_storage_time(deployed_at)
        if error is not None:
            changes["error"] = require_str(error, "error")
        query = {"_id": oid, "project_id": require_str(project_id, "project_id")}
        await self._deployments.update_one(query, {"$set": changes})

    async def update_backfill(
        self, project_id: str, deployment_id: str, progress: BackfillProgress
    ) -> bool:
        oid = _oid(deployment_id)
        if oid is None:
            return False
        query = {
            "_id": oid,
            "project_id": require_str(project_id, "project_id"),
            "status": "backfilling",
        }
        stored = normalize_times(progress).model_dump(mode="python")
        result = await self._deployments.update_one(query, {"$set": {"backfill": stored}})
        return result.matched_count == 1

    async def deployments_in_status(self, status: DeploymentStatus) -> list[DeploymentDocument]:
        query = {"status": require_str(status, "status")}
        cursor = self._deployments.find(query).sort(_DRAFT_ORDER)
        return [DeploymentDocument.model_validate(_from_mongo(r)) for r in await cursor.to_list()]

    async def mark_rolled_back(self, project_id: str, after_version: int) -> int:
        query = {
            "project_id": require_str(project_id, "project_id"),
            "version": {"$gt": int(after_version)},
            "status": "success",
        }
        result = await self._deployments.update_many(query, {"$set": {"status": "rolled_back"}})
        return result.modified_count

    async def list_deployments(
        self, project_id: str, *, limit: int | None = None, offset: int = 0
    ) -> tuple[list[DeploymentDocument], int]:
        query: Doc = {"project_id": require_str(project_id, "project_id")}
        # Newest first by version: unique per project, so the order is total.
        order = [("version", DESCENDING)]
        rows, total = await self._page(self._deployments, query, order, limit, offset)
        return [DeploymentDocument.model_validate(r) for r in rows], total

    async def get_deployment(
        self, project_id: str, deployment_id: str
    ) -> DeploymentDocument | None:
        raw = await self._get(self._deployments, project_id, deployment_id)
        return DeploymentDocument.model_validate(raw) if raw is not None else None

    async def latest_deployment(
        self, project_id: str, statuses: Sequence[DeploymentStatus] = ("success",)
    ) -> DeploymentDocument | None:
        query = {
            "project_id": require_str(project_id, "project_id"),
            "status": {"$in": [require_str(s, "status") for s in statuses]},
        }
        raw = await self._deployments.find_one(query, sort=[("version", DESCENDING)])
        return DeploymentDocument.model_validate(_from_mongo(raw)) if raw is not None else None

    async def deployed_projects(self) -> list[str]:
        projects = await self._deployments.distinct("project_id", {"status": "success"})
        return sorted(str(p) for p in projects)
