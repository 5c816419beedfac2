"""The compute process: `python -m runtime.compute.main` (HTTP on port 9100).

The work is the consumer loop (`worker.py`): Kafka (or the local log) → per-user
feature records in the online store. Archiving events is the archive process's job
(`runtime/archive`, its own consumer group). The HTTP port only serves `/health`,
`/ready` (backends plus the consumer loop, as `compute_consumer`), `/consumer` (the
loop's state and lag) and `/metrics`.

`compute_startup` (the start-up hook that runs the worker) and `compute_router`
(`/consumer`) are also what the standalone process mounts, after
`config_loader_hook`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from contextlib import AsyncExitStack

from fastapi import APIRouter, FastAPI

from app.core.config_loader import config_loader_hook
from app.core.consumer_loop import LoopStatus, status_router
from app.core.metrics import metrics_router
from app.core.server import serve
from app.core.service import Backend, Resources, StartupHook, build_app
from app.core.settings import ComputeSettings
from app.db import factory
from runtime.compute.metrics import ComputeMetrics
from runtime.compute.worker import (
    ComputeWorker,
    WorkerOptions,
    freeze_long_lived_objects,
    wall_clock_ms,
)
from runtime.compute.writer import FeatureWriter

logger = logging.getLogger(__name__)

# Where the hooks leave things in `Resources.extras`.
COMPUTE_WORKER = "compute_worker"
COMPUTE_TASK = "compute_task"
COMPUTE_METRICS = "compute_metrics"
# The name of the consumer loop's entry in /ready.
CONSUMER_CHECK = "compute_consumer"
# How long shutdown waits for the in-flight batch to be stored and committed.
_STOP_TIMEOUT_S = 30.0


def consumer_status(resources: Resources) -> LoopStatus | None:
    """Returns the worker's state, or None when this process runs no worker."""
    worker = resources.extras.get(COMPUTE_WORKER)
    task = resources.extras.get(COMPUTE_TASK)
    if not isinstance(worker, ComputeWorker) or not isinstance(task, asyncio.Task):
        return None
    return worker.status(task)


def compute_startup(
    metrics: ComputeMetrics,
    *,
    options: WorkerOptions | None = None,
    now_ms: Callable[[], int] = wall_clock_ms,
) -> StartupHook:
    """Returns the start-up hook that runs the compute worker as a background task.

    It builds the consumer from the process's backend settings (`factory.make_consumer`),
    and starts the loop; on shutdown it lets the in-flight batch finish and commit, then
    leaves the group. Options default to the process's ComputeSettings (or the defaults
    in another process). Runs after `config_loader_hook`; raises RuntimeError at
    start-up when the process has no online store or no config loader.
    """

    async def start(resources: Resources, stack: AsyncExitStack) -> None:
        loader = resources.config_loader
        if loader is None or resources.online_store is None:
            raise RuntimeError("compute needs the online store and the config loader hook")
        opts = options or WorkerOptions.from_settings(resources.settings)
        writer = FeatureWriter(
            resources.online_store,
            now_ms=now_ms,
            metrics=metrics,
            concurrency=opts.write_concurrency,
            dedup=opts.dedup,
        )
        consumer = factory.make_consumer(resources.settings.backends)
        # Started on first use (by produce_many): a down log must not stop start-up.
        dead_letter = factory.make_dead_letter_producer(resources.settings.backends)
        stack.push_async_callback(dead_letter.stop)
        worker = ComputeWorker(
            consumer,
            writer,
            loader,
            metrics=metrics,
            options=opts,
            dead_letter=dead_letter,
        )
        task = asyncio.create_task(worker.run(), name="compute-worker")
        resources.extras[COMPUTE_WORKER] = worker
        resources.extras[COMPUTE_TASK] = task
        resources.extras[COMPUTE_METRICS] = metrics

        resources.checks[CONSUMER_CHECK] = functools.partial(worker.check, task)

        stack.push_async_callback(worker.stop_running, task, _STOP_TIMEOUT_S)

    return start


def compute_router() -> APIRouter:
    """Returns `GET /consumer` (the loop's state: running, retrying, lag)."""
    return status_router(
        "/consumer", "The consumer loop: running, retrying, lag per partition", consumer_status
    )


def create_app(
    settings: ComputeSettings | None = None, *, now_ms: Callable[[], int] | None = None
) -> FastAPI:
    """Returns the compute app; `now_ms` (epoch ms) defaults to the wall clock, tests
    inject one to control lateness and pruning."""
    settings = settings or ComputeSettings()
    metrics = ComputeMetrics()
    app = build_app(
        settings=settings,
        title="Data Platform Service: feature compute",
        description=(
            "Consumes the events topic into per-user windowed features (time tiles) in the "
            "online store. HTTP is for health, readiness and Prometheus metrics only."
        ),
        needs=(Backend.CACHE, Backend.CONFIG_STORE, Backend.ONLINE_STORE),
        startup=(
            config_loader_hook,
            compute_startup(metrics, now_ms=now_ms or wall_clock_ms),
        ),
    )
    app.include_router(compute_router())
    app.include_router(metrics_router(metrics.registry))
    return app


def main() -> None:
    """Runs the process with uvicorn on COMPUTE_HOST:COMPUTE_PORT."""
    settings = ComputeSettings()
    app = create_app(settings)
    # Process-wide GC policy belongs to the process entry, not to the worker class.
    freeze_long_lived_objects()
    serve(app, settings)


if __name__ == "__main__":
    main()
