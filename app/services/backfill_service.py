"""Backfill on deploy: a deployment's new and changed features filled from the event
archive before the version goes live, while the old version keeps serving.

How a deployment goes (`DeploymentService` records `backfilling` and stages; the
runner here does the rest):

1. Staged. The live config is republished with the target's new and changed features
   as `staged` (`config_channel.running_config`). Compute runs them beside the live
   ones, under their staged names (`app/tiles/staging.py`), so from its next batch on
   every event it applies reaches them too; serving and ingestion ignore them.
2. Catching up (`phase = catching_up`). After `settle_s` (every compute's loader has
   the staged config: a 0.5 s poll, a 5 s store poll while Redis is down, plus a
   batch), the runner reads the event log's end offsets E_p. Every event compute
   applied without the staged features sits below E_p; the runner waits until the
   archive holds every partition up to E_p - 1, so all of them are archived.
3. Filling (`phase = filling`). Every archived user is rebuilt from the archive under
   the staged config by `RebuildService` (SQL in ClickHouse per chunk of users, a
   compare-and-set per record), live features and staged ones together. That rebuild
   is exact beside a running compute (its docstring proves it): the record takes the
   archive's offsets, so compute skips what the archive already counted, and counts
   what comes after, staged features included; a user compute is ahead of the archive
   for is deferred and retried once the archive caught up. So nothing is counted twice
   or missed at the seam between archive and stream. Progress (users done of the total)
   is stored after every chunk.
4. Live. The target is published as the live config and recorded `success`; serving
   reads the backfilled features from their staged names until compute moves them to
   the feature's name on the user's next write.

Failure. The archive not catching up within `catch_up_timeout_s`, users staying ahead
of the archive for `deferred_rounds`, or `max_errors` runs in a row raising: the
deployment is recorded `failed` with the reason and the live config republished
without the staged features; the old version never stopped serving.

Crash. Progress lives in the deployment document, so a restarted runner finds the
deployment still `backfilling` and resumes after the last user it recorded (from the
start if users were deferred). If no runner ever comes back, the next deploy fails it
as abandoned (`BACKFILL_STALE_AFTER` without progress) and republishes the live config.

Where it runs: beside the archive (the archive process, or standalone). The archive
is what it reads, chDB opens in one process only, and the archive's own consumer knows
the event log's end offsets. With several archive processes each runs a runner; two
runners on one deployment only repeat idempotent compare-and-set writes, but a runner
only sees its own consumer's partitions, so run one archive process per ClickHouse
when deployments backfill.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

from app.core.config_channel import running_config
from app.db.cache import Cache
from app.db.clickhouse import ClickHouseClientSink
from app.db.config_store import ConfigStore
from app.db.documents import DeploymentDocument
from app.schemas.deployment import BackfillProgress
from app.services.common import utc_now
from app.services.deployment_service import DeploymentService
from app.services.rebuild_service import RebuildReport, RebuildService
from runtime.compute.specs import ProjectSpecs, build_specs

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BackfillOptions:
    """The runner's timing (see the module docstring for what each bounds)."""

    poll_s: float = 1.0
    settle_s: float = 6.0
    catch_up_timeout_s: float = 600.0
    deferred_rounds: int = 30
    deferred_wait_s: float = 1.0
    max_errors: int = 5


class BackfillFailed(Exception):
    """A backfill that cannot finish; the message is the reason recorded."""


class _Stopped(Exception):
    """The deployment is no longer `backfilling` (failed as abandoned meanwhile)."""


class BackfillRunner:
    """Finds `backfilling` deployments and fills them (one at a time)."""

    def __init__(
        self,
        store: ConfigStore,
        cache: Cache,
        archive: ClickHouseClientSink,
        rebuild: RebuildService,
        log_ends: Callable[[], Awaitable[dict[int, int]]],
        *,
        options: BackfillOptions | None = None,
        now: Callable[[], datetime] = utc_now,
    ) -> None:
        self._store = store
        self._archive = archive
        self._rebuild = rebuild
        self._log_ends = log_ends
        self._options = options or BackfillOptions()
        self._now = now
        self._deployments = DeploymentService(store, cache)
        self._errors: dict[str, int] = {}  # deployment id -> runs in a row that raised

    async def run_forever(self) -> None:
        """Runs `run_once` every `poll_s` until cancelled; never raises otherwise."""
        while True:
            try:
                await self.run_once()
            except Exception:  # the store is down: the next round retries
                logger.exception("backfill round failed")
            await asyncio.sleep(self._options.poll_s)

    async def run_once(self) -> int:
        """Runs every deployment now `backfilling` to its end. Returns how many it saw."""
        docs = await self._store.deployments_in_status("backfilling")
        for doc in docs:
            await self._run_guarded(doc)
        return len(docs)

    async def _run_guarded(self, doc: DeploymentDocument) -> None:
        try:
            await self.run(doc)
        except _Stopped:
            logger.info(
                "backfill of %s v%d stopped: no longer backfilling", doc.project_id, doc.version
            )
        except BackfillFailed as exc:
            await self._deployments.fail_backfill(doc, str(exc))
        except Exception as exc:
            errors = self._errors[doc.id] = self._errors.get(doc.id, 0) + 1
            logger.exception("backfill of %s v%d raised (%d)", doc.project_id, doc.version, errors)
            if errors >= self._options.max_errors:
                await self._deployments.fail_backfill(
                    doc, f"{errors} attempts raised; last: {type(exc).__name__}: {exc}"
                )
            return
        self._errors.pop(doc.id, None)

    async def run(self, doc: DeploymentDocument) -> None:
        """Fills one `backfilling` deployment and makes it live. Raises BackfillFailed
        (the reason), _Stopped, or what the backends raise (the caller retries)."""
        progress = doc.backfill
        if progress is None:
            raise BackfillFailed("the deployment lists no features to backfill")
        if progress.phase != "done":
            live = await self._store.latest_deployment(doc.project_id)
            if live is None or live.version >= doc.version:
                raise BackfillFailed("a newer version went live meanwhile")
            # Again on every (re)start: the deploy's own publish may not have happened.
            await self._deployments.stage(doc, live)
            staged = running_config(live, doc)
            assert staged is not None
            specs = build_specs(staged)
            if progress.phase == "catching_up":
                progress = await self._catch_up(doc, progress)
            progress = await self._fill(doc, progress, specs)
            doc = doc.model_copy(update={"backfill": progress})
        if not await self._deployments.complete_backfill(doc):
            raise _Stopped
        logger.info("backfill of %s v%d done: live", doc.project_id, doc.version)

    async def _save(self, doc: DeploymentDocument, progress: BackfillProgress) -> BackfillProgress:
        progress = progress.model_copy(update={"heartbeat_at": self._now()})
        if not await self._store.update_backfill(doc.project_id, doc.id, progress):
            raise _Stopped
        return progress

    async def _catch_up(
        self, doc: DeploymentDocument, progress: BackfillProgress
    ) -> BackfillProgress:
        """Waits for every compute to run the staged config, then for the archive to hold
        every event written before; returns the progress in phase `filling`."""
        options = self._options
        await asyncio.sleep(options.settle_s)
        deadline = asyncio.get_running_loop().time() + options.catch_up_timeout_s
        ends: dict[int, int] = {}
        while True:
            if not ends:
                ends = await self._log_ends()  # empty until the consumer has partitions
            if ends:
                archived = await self._archive.positions()
                behind = {p: e for p, e in ends.items() if archived.get(p, -1) < e - 1}
                if not behind:
                    break
            if asyncio.get_running_loop().time() > deadline:
                raise BackfillFailed(
                    f"the archive did not catch up with the event log within "
                    f"{options.catch_up_timeout_s:g} s (partitions behind: "
                    f"{sorted(behind) if ends else 'none assigned'})"
                )
            progress = await self._save(doc, progress)
            await asyncio.sleep(0.2)
        total = await self._rebuild.user_count(doc.project_id)
        return await self._save(
            doc, progress.model_copy(update={"phase": "filling", "users_total": total})
        )

    async def _fill(
        self, doc: DeploymentDocument, progress: BackfillProgress, specs: ProjectSpecs
    ) -> BackfillProgress:
        """Rebuilds every archived user under the staged config, then the deferred ones
        until none is left; returns the progress."""
        if specs.ttl_seconds is None:
            return progress  # nothing to store
        report = RebuildReport(doc.project_id, doc.version)
        if progress.deferred:
            # Users deferred before a restart are not remembered: start over.
            progress = progress.model_copy(update={"after": None, "users_done": 0, "deferred": 0})
        after = progress.after
        while True:
            before = report.users
            after = await self._rebuild.rebuild_page(specs, after, report)
            if after is None:
                break
            progress = await self._save(
                doc,
                progress.model_copy(
                    update={
                        "after": after,
                        "users_done": progress.users_done + report.users - before,
                        "deferred": len(report.deferred_users),
                    }
                ),
            )
        deferred = sorted(set(report.deferred_users))
        for _round in range(self._options.deferred_rounds):
            if not deferred:
                break
            await asyncio.sleep(self._options.deferred_wait_s)
            retry = RebuildReport(doc.project_id, doc.version)
            await self._rebuild.rebuild_users(specs, deferred, retry)
            deferred = sorted(set(retry.deferred_users))
            progress = await self._save(
                doc, progress.model_copy(update={"deferred": len(deferred)})
            )
        if deferred:
            raise BackfillFailed(
                f"{len(deferred)} user(s) stayed ahead of the archive "
                f"(compute applied events the archive does not hold), e.g. {deferred[:3]}"
            )
        return progress
