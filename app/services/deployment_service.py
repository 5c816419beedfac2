"""Deployments: pending changes, deploy, rollback, history.

A deployment moves `pending` → `deploying` → `success` | `failed`; a later rollback
marks it `rolled_back`. Only `success` is ever live: the config loader's source of
truth is the latest successful deployment, so a failed one is never picked up.

With an event archive (`ANALYTICS` set), a deployment that adds features or changes
one's definition (its fingerprint) goes `deploying` → `backfilling` instead: the old
version keeps serving while the backfill runner (`app/services/backfill_service.py`)
fills those features from the archive, then `success` (the version goes live) or
`failed` with the reason (the old one stays live). A backfill whose runner stops
reporting progress for `backfill_stale_after` is failed by the next deploy.

Concurrency without transactions (FerretDB has none): a deploy reads the project's
newest deployment of any status once, refuses to start while it is `pending` or
`deploying` (unless abandoned for `STALE_AFTER`), and inserts version = that + 1. The
unique (project_id, version) key then lets exactly one of two racing deploys in; the
other gets DeploymentConflict. A deploy that reads after the winner's insert sees it
in progress and gets DeploymentConflict too, so two deploys can never both succeed.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta

from app.core.config_channel import (
    announce,
    config_key,
    publish_config,
    running_config,
    token_version,
    version_key,
    write_config,
)
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
from app.db.config_store import ConfigStore, DuplicateKey
from app.db.documents import DeploymentDocument
from app.schemas.common import Page
from app.schemas.deployment import (
    BackfillProgress,
    Change,
    ConfigSnapshot,
    DeploymentRead,
    DeploymentStatus,
    PendingChanges,
    RollbackRead,
)
from app.services.common import new_id, utc_now
from app.services.config_diff import diff, snapshot_from_draft, validate_draft
from app.services.draft_reset import reset_draft
from app.services.secret_publisher import SecretPublisher
from runtime.compute.specs import build_specs, event_key

logger = logging.getLogger(__name__)

ALL_STATUSES: tuple[DeploymentStatus, ...] = (
    "pending",
    "deploying",
    "backfilling",
    "success",
    "failed",
    "rolled_back",
)
# A deploy takes milliseconds; one still pending after this long lost its process.
STALE_AFTER = timedelta(minutes=2)
# A backfill reports progress after every chunk of users (seconds); one silent this long
# lost its runner and no runner took it over.
BACKFILL_STALE_AFTER = timedelta(minutes=10)


def needs_backfill(live: ConfigSnapshot | None, target: ConfigSnapshot) -> list[str]:
    """Returns the names of the features of `target` to fill from the archive before it
    goes live: the ones compute runs that are new or whose fingerprint changed against
    `live`. Features whose source event is not live yet have nothing archived (ingestion
    refused those events) and are not listed; neither is anything before a first deploy.
    Windows are not part of a fingerprint: a window added to a feature starts empty."""
    if live is None:
        return []
    before = {spec.name: spec.fingerprint for spec in build_specs(live).specs}
    live_events = {
        event_key(p.id, e.name)
        for p in live.pipelines
        if p.status == "active"
        for e in p.events
        if e.enabled
    }
    return [
        spec.name
        for spec in build_specs(target).specs
        if before.get(spec.name) != spec.fingerprint
        and getattr(spec, "source", None) in live_events
    ]


def to_read(doc: DeploymentDocument) -> DeploymentRead:
    """Returns the API view of a deployment (without its snapshot)."""
    return DeploymentRead.model_validate(doc.model_dump(exclude={"snapshot"}))


class DeploymentService:
    """The rules of deploying a project's draft and rolling it back."""

    def __init__(
        self,
        store: ConfigStore,
        cache: Cache,
        *,
        stale_after: timedelta = STALE_AFTER,
        backfill: bool = False,
        backfill_stale_after: timedelta = BACKFILL_STALE_AFTER,
    ) -> None:
        """`backfill`: whether an event archive (and its backfill runner) exists, so new
        and changed features are filled before they go live."""
        self._store = store
        self._cache = cache
        self._stale_after = stale_after
        self._backfill = backfill
        self._backfill_stale_after = backfill_stale_after

    # -- reading -------------------------------------------------------------------------
    async def list_deployments(
        self, project_id: str, *, limit: int = 50, offset: int = 0
    ) -> Page[DeploymentRead]:
        """Returns one page of the history, newest first."""
        docs, total = await self._store.list_deployments(project_id, limit=limit, offset=offset)
        return Page(items=[to_read(d) for d in docs], total=total, limit=limit, offset=offset)

    async def get(self, project_id: str, deployment_id: str) -> DeploymentRead:
        """Returns one deployment; raises DeploymentNotFound."""
        return to_read(await self._find(project_id, deployment_id))

    async def pending(self, project_id: str) -> PendingChanges:
        """Returns the diff between the draft and the live (latest successful) deployment."""
        live = await self._store.latest_deployment(project_id)
        draft = await self._draft(project_id, live.version + 1 if live else 1)
        return PendingChanges(
            base_version=live.version if live else None,
            changes=diff(live.snapshot if live else None, draft),
        )

    # -- deploy --------------------------------------------------------------------------
    async def deploy(
        self, project_id: str, deployed_by: str, description: str = ""
    ) -> DeploymentRead:
        """Validates the draft and makes it the live config as a new version.

        Raises NothingToDeploy (409) when the draft equals the live config,
        InvalidConfig (422, every problem in `fields`), DeploymentConflict (409) when
        another deployment is in progress or took the version first, and
        DeploymentFailed (503) when publishing failed: the version is then recorded
        `failed` and the previous one stays live.
        """
        head, live = await self._head_and_live(project_id)
        version = head.version + 1 if head else 1
        draft = await self._draft(project_id, version)
        changes = diff(live.snapshot if live else None, draft)
        if not changes:
            where = f"version {live.version}" if live else "an empty config"
            raise NothingToDeploy(f"The draft has no changes against {where}")
        problems = validate_draft(draft)
        if problems:
            raise InvalidConfig(
                f"The draft cannot be deployed: {len(problems)} problem(s); "
                f"first: {problems[0].msg}",
                fields=problems,
            )
        return await self._activate(draft, changes, deployed_by, description, live)

    # -- rollback ------------------------------------------------------------------------
    async def rollback(self, project_id: str, deployment_id: str, deployed_by: str) -> RollbackRead:
        """Re-activates a deployment's snapshot as a new version, marks the successful
        versions after it `rolled_back` and resets the draft to it.

        Returns the new deployment with `discarded_changes`: the draft's pending edits
        (against the version live before) that the reset threw away, so the caller is
        told rather than finding a feature gone.

        Raises DeploymentNotFound, RollbackNotAllowed (409: it never went live),
        AlreadyLive (409: its config is the live one), DeploymentConflict and
        DeploymentFailed as deploy() does.
        """
        target = await self._find(project_id, deployment_id)
        if target.status not in ("success", "rolled_back"):
            raise RollbackNotAllowed(
                f"Version {target.version} is {target.status}: only a deployment that went "
                "live can be rolled back to"
            )
        head, live = await self._head_and_live(project_id)
        version = head.version + 1 if head else 1
        snapshot = target.snapshot.model_copy(update={"version": version})
        changes = diff(live.snapshot if live else None, snapshot)
        if live is not None and (live.id == target.id or not changes):
            raise AlreadyLive(
                f"Version {target.version}'s config is already live (version {live.version})"
            )
        discarded = diff(live.snapshot if live else None, await self._draft(project_id, version))
        # Draft first: if anything below fails, the draft already shows the target and a
        # retry (or a plain deploy) finishes the job. reset_draft is safe to re-run.
        await reset_draft(self._store, SecretPublisher(self._cache), target.snapshot)

        async def retire_later_versions() -> None:
            await self._store.mark_rolled_back(project_id, target.version)

        deployment = await self._activate(
            snapshot,
            changes,
            deployed_by,
            f"Rollback to version {target.version}",
            live,
            rolled_back_from=target.version,
            before_success=retire_later_versions,
        )
        return RollbackRead(**deployment.model_dump(), discarded_changes=discarded)

    # -- internals -----------------------------------------------------------------------
    async def _find(self, project_id: str, deployment_id: str) -> DeploymentDocument:
        doc = await self._store.get_deployment(project_id, deployment_id)
        if doc is None:
            raise DeploymentNotFound(f"Deployment {deployment_id!r} not found")
        return doc

    async def _draft(self, project_id: str, version: int) -> ConfigSnapshot:
        pipelines, _ = await self._store.list_pipelines(project_id)
        features, _ = await self._store.list_features(project_id)
        return snapshot_from_draft(project_id, version, pipelines, features)

    async def _head_and_live(
        self, project_id: str
    ) -> tuple[DeploymentDocument | None, DeploymentDocument | None]:
        """Returns the newest deployment of any status and the live one.

        Raises DeploymentConflict while the newest is in progress; one abandoned for
        longer than `stale_after` is recorded `failed` and the live config republished.
        """
        head = await self._store.latest_deployment(project_id, ALL_STATUSES)
        if head is not None and head.status in ("pending", "deploying", "backfilling"):
            since, patience = head.created_at, self._stale_after
            if head.status == "backfilling" and head.backfill is not None:
                since = head.backfill.heartbeat_at or since
                patience = self._backfill_stale_after
            if utc_now() - since < patience:
                raise DeploymentConflict(
                    f"Deployment version {head.version} is in progress ({head.status}); "
                    "retry when it ends"
                )
            error = f"abandoned: {head.status} without progress for {patience}"
            logger.warning("deployment %s v%d %s", project_id, head.version, error)
            await self._store.update_deployment_status(project_id, head.id, "failed", error=error)
            head = head.model_copy(update={"status": "failed", "error": error})
            live = await self._store.latest_deployment(project_id)
            await self._restore(project_id, live)
            return head, live
        if head is not None and head.status == "success":
            return head, head
        return head, await self._store.latest_deployment(project_id)

    async def _activate(
        self,
        snapshot: ConfigSnapshot,
        changes: list[Change],
        deployed_by: str,
        description: str,
        previous: DeploymentDocument | None,
        *,
        rolled_back_from: int | None = None,
        before_success: Callable[[], Awaitable[None]] | None = None,
    ) -> DeploymentRead:
        project_id, version = snapshot.project_id, snapshot.version
        now = utc_now()
        fill = needs_backfill(previous.snapshot if previous else None, snapshot)
        progress = (
            BackfillProgress(features=fill, started_at=now, heartbeat_at=now)
            if fill and self._backfill
            else None
        )
        doc = DeploymentDocument(
            id=new_id(),
            project_id=project_id,
            version=version,
            status="pending",
            changes=changes,
            description=description,
            deployed_by=deployed_by,
            deployed_at=None,
            created_at=now,
            snapshot=snapshot,
            rolled_back_from=rolled_back_from,
            backfill=progress,
        )
        try:
            await self._store.insert_deployment(doc)
        except DuplicateKey as exc:
            raise DeploymentConflict(
                f"Version {version} was taken by a concurrent deployment; retry"
            ) from exc
        await self._store.update_deployment_status(project_id, doc.id, "deploying")
        if progress is not None:
            return await self._start_backfill(doc, previous)
        try:
            await publish_config(self._cache, snapshot)
            if before_success is not None:
                await before_success()
            await self._store.update_deployment_status(
                project_id, doc.id, "success", deployed_at=utc_now()
            )
        except Exception as exc:
            await self._fail(doc, previous, exc)
            raise DeploymentFailed(
                f"Deployment version {version} failed ({type(exc).__name__}); "
                + (f"version {previous.version} stays live" if previous else "nothing is live")
            ) from exc
        await self._confirm_published(snapshot)
        return to_read(await self._find(project_id, doc.id))

    # -- backfill (the runner calls these) -------------------------------------------------
    async def _start_backfill(
        self, doc: DeploymentDocument, previous: DeploymentDocument | None
    ) -> DeploymentRead:
        """Records `backfilling` and stages the new features for compute; the runner
        takes it from there (and stages them again itself, should this publish fail)."""
        await self._store.update_deployment_status(doc.project_id, doc.id, "backfilling")
        try:
            await self.stage(doc.model_copy(update={"status": "backfilling"}), previous)
        except Exception as exc:  # Redis: the runner retries; loaders also read the store
            logger.warning("staging %s v%d failed: %r", doc.project_id, doc.version, exc)
        return to_read(await self._find(doc.project_id, doc.id))

    async def stage(self, doc: DeploymentDocument, live: DeploymentDocument | None = None) -> None:
        """Publishes the live config with `doc`'s backfilled features staged, so compute
        fills them from the stream beside the live ones. Raises CacheUnavailable."""
        if live is None:
            live = await self._store.latest_deployment(doc.project_id)
        running = running_config(live, doc)
        if running is not None:
            await publish_config(self._cache, running)

    async def complete_backfill(self, doc: DeploymentDocument) -> bool:
        """Makes a backfilled deployment live (`success`). Returns False when it is no
        longer `backfilling` (failed as abandoned meanwhile): nothing is published.
        Raises what the store and the cache raise (the caller retries)."""
        assert doc.backfill is not None
        done = doc.backfill.model_copy(update={"phase": "done", "heartbeat_at": utc_now()})
        if not await self._store.update_backfill(doc.project_id, doc.id, done):
            return False
        snapshot = doc.snapshot.model_copy(update={"version": doc.version})
        await publish_config(self._cache, snapshot)
        if doc.rolled_back_from is not None:
            await self._store.mark_rolled_back(doc.project_id, doc.rolled_back_from)
        await self._store.update_deployment_status(
            doc.project_id, doc.id, "success", deployed_at=utc_now()
        )
        await self._confirm_published(snapshot)
        return True

    async def fail_backfill(self, doc: DeploymentDocument, reason: str) -> None:
        """Records the backfill's failure and publishes the live config again without the
        staged features: the old version keeps serving."""
        error = f"backfill failed: {reason}"[:500]
        logger.error("deployment %s v%d %s", doc.project_id, doc.version, error)
        await self._store.update_deployment_status(doc.project_id, doc.id, "failed", error=error)
        await self._restore(doc.project_id, await self._store.latest_deployment(doc.project_id))

    async def _fail(
        self, doc: DeploymentDocument, previous: DeploymentDocument | None, exc: Exception
    ) -> None:
        """Records the failure and puts the previous version back in Redis, in case part
        of the publish got through. Both best effort: the backend that failed may be
        the one these calls need."""
        error = f"publishing failed: {type(exc).__name__}: {exc}"[:500]
        logger.error("deployment %s v%d %s", doc.project_id, doc.version, error)
        try:
            await self._store.update_deployment_status(
                doc.project_id, doc.id, "failed", error=error
            )
        except Exception:
            logger.exception("could not record the failure of %s v%d", doc.project_id, doc.version)
        # What the store now calls live (a rollback may have retired versions before the
        # failure); the version we knew is the fallback when the store is the one failing.
        try:
            live = await self._store.latest_deployment(doc.project_id)
        except Exception:
            live = previous
        await self._restore(doc.project_id, live)

    async def _restore(self, project_id: str, live: DeploymentDocument | None) -> None:
        """Publishes `live` again (or removes the shared copy if nothing is live)."""
        try:
            if live is not None:
                await publish_config(
                    self._cache, live.snapshot.model_copy(update={"version": live.version})
                )
            else:
                await self._cache.delete(config_key(project_id))
                await self._cache.delete(version_key(project_id))
                await announce(self._cache, project_id, 0)
        except Exception as exc:  # Redis down: a restarted Redis is empty, loaders use the store
            logger.warning("could not restore the live config of %s: %r", project_id, exc)

    async def _confirm_published(self, snapshot: ConfigSnapshot) -> None:
        """Re-publishes if a loader's write-back replaced our copy with the older version it
        read from the store just before our success was recorded (see config_loader)."""
        with contextlib.suppress(Exception):
            raw = await self._cache.get(version_key(snapshot.project_id))
            if raw is None or token_version(raw) < snapshot.version:
                await write_config(self._cache, snapshot)
