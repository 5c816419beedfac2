"""Deployments: pending changes, deploy, rollback, history.

A deployment moves `pending` → `deploying` → `success` | `failed`; a later rollback
marks it `rolled_back`. Only `success` is ever live: the config loader's source of
truth is the latest successful deployment, so a failed one is never picked up.

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

logger = logging.getLogger(__name__)

ALL_STATUSES: tuple[DeploymentStatus, ...] = (
    "pending",
    "deploying",
    "success",
    "failed",
    "rolled_back",
)
# A deploy takes milliseconds; one still pending after this long lost its process.
STALE_AFTER = timedelta(minutes=2)


def to_read(doc: DeploymentDocument) -> DeploymentRead:
    """Returns the API view of a deployment (without its snapshot)."""
    return DeploymentRead.model_validate(doc.model_dump(exclude={"snapshot"}))


class DeploymentService:
    """The rules of deploying a project's draft and rolling it back."""

    def __init__(
        self, store: ConfigStore, cache: Cache, *, stale_after: timedelta = STALE_AFTER
    ) -> None:
        self._store = store
        self._cache = cache
        self._stale_after = stale_after

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
        if head is not None and head.status in ("pending", "deploying"):
            if utc_now() - head.created_at < self._stale_after:
                raise DeploymentConflict(
                    f"Deployment version {head.version} is in progress; retry when it ends"
                )
            error = f"abandoned: still {head.status} after {self._stale_after}"
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
        doc = DeploymentDocument(
            id=new_id(),
            project_id=project_id,
            version=version,
            status="pending",
            changes=changes,
            description=description,
            deployed_by=deployed_by,
            deployed_at=None,
            created_at=utc_now(),
            snapshot=snapshot,
            rolled_back_from=rolled_back_from,
        )
        try:
            await self._store.insert_deployment(doc)
        except DuplicateKey as exc:
            raise DeploymentConflict(
                f"Version {version} was taken by a concurrent deployment; retry"
            ) from exc
        await self._store.update_deployment_status(project_id, doc.id, "deploying")
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
            if raw is None or int(raw) < snapshot.version:
                await write_config(self._cache, snapshot)
