"""The archive process: `python -m runtime.archive.main` (HTTP on port 9200).

The work is the consumer loop (`worker.py`): the events topic, under its own consumer
group, into the event archive (ClickHouse, or chDB when one process runs everything).
The HTTP port serves `/health`, `/ready` (the archive plus the loop, as
`archive_consumer`), `/archive` (the loop's state and lag) and `/metrics`.

It also runs deployments' backfills (`backfill_startup`, `ARCHIVE_BACKFILL`): they
read the archive, and chDB opens in one process only.

`archive_startup`, `backfill_startup` and `archive_router` are also what the standalone
process mounts.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from contextlib import AsyncExitStack
from dataclasses import dataclass

from fastapi import APIRouter, FastAPI

from app.core.consumer_loop import LoopStatus, status_router, wall_clock_ms
from app.core.metrics import metrics_router
from app.core.server import serve
from app.core.service import Backend, Resources, StartupHook, build_app
from app.core.settings import ArchiveSettings
from app.db import factory
from app.db.clickhouse import ClickHouseClientSink
from app.services.backfill_service import BackfillOptions, BackfillRunner
from app.services.rebuild_service import CHUNK_USERS, RebuildService
from runtime.archive.metrics import ArchiveMetrics
from runtime.archive.worker import ArchiveOptions, ArchiveWorker

logger = logging.getLogger(__name__)

ARCHIVE_CHECK = "archive_consumer"
_STOP_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class RunningArchive:
    """What the start-up hook leaves in `Resources.extras[ARCHIVE]`."""

    worker: ArchiveWorker
    task: asyncio.Task[None]


ARCHIVE = "archive"


def archive_status(resources: Resources) -> LoopStatus | None:
    """Returns the loop's state, or None when this process runs no archive worker."""
    running = resources.extras.get(ARCHIVE)
    if not isinstance(running, RunningArchive):
        return None
    return running.worker.status(running.task)


def archive_startup(
    metrics: ArchiveMetrics, *, group: str, options: ArchiveOptions | None = None
) -> StartupHook:
    """Returns the start-up hook that runs the archive worker as a background task in
    consumer group `group`. Raises RuntimeError at start-up when the process has no
    archive backend (`ANALYTICS=none`)."""

    async def start(resources: Resources, stack: AsyncExitStack) -> None:
        if resources.analytics is None:
            raise RuntimeError("the archive needs ANALYTICS=clickhouse (or chdb)")
        consumer = factory.make_consumer(resources.settings.backends, group)
        worker = ArchiveWorker(consumer, resources.analytics, metrics=metrics, options=options)
        task = asyncio.create_task(worker.run(), name="archive-worker")
        resources.extras[ARCHIVE] = RunningArchive(worker, task)

        resources.checks[ARCHIVE_CHECK] = functools.partial(worker.check, task)

        stack.push_async_callback(worker.stop_running, task, _STOP_TIMEOUT_S)

    return start


def backfill_startup(
    options: BackfillOptions | None = None, *, chunk_users: int = CHUNK_USERS
) -> StartupHook:
    """Returns the start-up hook that runs the backfill runner beside the archive worker
    (after `archive_startup`). Raises RuntimeError at start-up when a backend it needs
    (config store, cache, online store, a ClickHouse archive) is missing."""

    async def start(resources: Resources, stack: AsyncExitStack) -> None:
        running = resources.extras.get(ARCHIVE)
        store, cache, online = resources.config_store, resources.cache, resources.online_store
        archive = resources.analytics
        if (
            store is None
            or cache is None
            or online is None
            or not isinstance(running, RunningArchive)
        ):
            raise RuntimeError("backfills need the config store, cache, online store and archive")
        if not isinstance(archive, ClickHouseClientSink):
            raise RuntimeError("backfills need ANALYTICS=clickhouse (or chdb)")
        rebuild = RebuildService(archive, online, now_ms=wall_clock_ms, chunk_users=chunk_users)
        runner = BackfillRunner(
            store, cache, archive, rebuild, running.worker.log_ends, options=options
        )
        task = asyncio.create_task(runner.run_forever(), name="backfill-runner")

        async def stop() -> None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        stack.push_async_callback(stop)

    return start


def archive_router() -> APIRouter:
    """Returns `GET /archive` (the loop's state: running, retrying, lag)."""
    return status_router(
        "/archive", "The archive loop: running, retrying, lag per partition", archive_status
    )


def options_of(settings: ArchiveSettings) -> ArchiveOptions:
    """Returns the loop's tuning from the process settings."""
    return ArchiveOptions(
        max_batch_messages=settings.max_batch_messages, poll_timeout_ms=settings.poll_timeout_ms
    )


def backfill_options(settings: ArchiveSettings) -> BackfillOptions:
    """Returns the backfill runner's timing from the process settings."""
    return BackfillOptions(settle_s=settings.backfill_settle_s)


def create_app(settings: ArchiveSettings | None = None) -> FastAPI:
    """Returns the archive app."""
    settings = settings or ArchiveSettings()
    metrics = ArchiveMetrics()
    app = build_app(
        settings=settings,
        title="Data Platform Service: event archive",
        description=(
            "Consumes the events topic, under its own consumer group, into the event "
            "archive (ClickHouse). HTTP is for health, readiness and metrics only."
        ),
        needs=(
            (Backend.ANALYTICS, Backend.CONFIG_STORE, Backend.CACHE, Backend.ONLINE_STORE)
            if settings.backfill
            else (Backend.ANALYTICS,)
        ),
        startup=(
            archive_startup(metrics, group=settings.consumer_group, options=options_of(settings)),
            *(
                (
                    backfill_startup(
                        backfill_options(settings), chunk_users=settings.backfill_chunk_users
                    ),
                )
                if settings.backfill
                else ()
            ),
        ),
    )
    app.include_router(archive_router())
    app.include_router(metrics_router(metrics.registry))
    return app


def main() -> None:
    """Runs the process with uvicorn on ARCHIVE_HOST:ARCHIVE_PORT."""
    settings = ArchiveSettings()
    serve(create_app(settings), settings)


if __name__ == "__main__":
    main()
