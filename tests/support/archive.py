"""The embedded archive (chDB) and an archive worker run until it has stored so many
events: what the archive, backfill and rebuild tests share."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from app.core.settings import BackendSettings
from app.db.clickhouse import ChdbSink
from runtime.archive.metrics import ArchiveMetrics
from runtime.archive.worker import ArchiveWorker

# Turns a hang into a failure; not a timing assertion.
ARCHIVE_BOUND_S = 90.0


@contextlib.asynccontextmanager
async def chdb_archive(settings: BackendSettings) -> AsyncIterator[ChdbSink]:
    """Yields an initialised chDB archive under `settings.data_dir`; closes it after."""
    sink = ChdbSink(settings)
    await sink.initialize()
    try:
        yield sink
    finally:
        await sink.close()


async def run_until_archived(worker: ArchiveWorker, metrics: ArchiveMetrics, rows: int) -> None:
    """Runs `worker` until `metrics` counts `rows` events archived, then stops it; raises
    the worker's own error if it ends first, TimeoutError after ARCHIVE_BOUND_S."""
    task = asyncio.create_task(worker.run())
    try:
        async with asyncio.timeout(ARCHIVE_BOUND_S):
            while metrics.events_archived._value.get() < rows:
                if task.done():
                    task.result()
                await asyncio.sleep(0.05)
    finally:
        worker.stop()
        async with asyncio.timeout(ARCHIVE_BOUND_S):
            await task
