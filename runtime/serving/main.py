"""The serving process: `python -m runtime.serving.main` (port 8002).

Reads the deployed config through the shared config loader and users' records from the
online store; writes nothing. `serving_startup`, `serving_router` and its `hot_routes`
are also what the standalone process mounts.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack

from fastapi import FastAPI

from app.core.config_loader import config_loader_hook
from app.core.metrics import metrics_router
from app.core.server import serve
from app.core.service import Backend, Resources, StartupHook, build_app
from app.core.settings import ServingSettings
from app.schemas.deployment import ConfigSnapshot
from app.tiles.derived import DerivedSpec
from app.tiles.features import FeatureSpec
from runtime.compute.specs import build_specs
from runtime.serving.metrics import ServingMetrics
from runtime.serving.reader import Clock, FeatureReader, system_clock
from runtime.serving.routes import FEATURE_SERVICE, hot_routes, serving_router
from runtime.serving.service import FeatureService


def snapshot_specs(snapshot: ConfigSnapshot) -> tuple[Sequence[FeatureSpec], Sequence[DerivedSpec]]:
    """Returns the specs a user's read serves for `snapshot` (enabled features of active
    pipelines' enabled events, per user and per user x entity), built by compute's own
    code so fingerprints match, and its derived features. Features a backfill stages
    (`snapshot.staged`) are not served until they are live."""
    built = build_specs(snapshot.model_copy(update={"staged": []}))
    return built.user_answer, built.derived


def snapshot_entity_specs(snapshot: ConfigSnapshot) -> Mapping[str, Sequence[FeatureSpec]]:
    """Returns the per-entity specs compute runs for `snapshot`, by entity name."""
    return {name: e.specs for name, e in build_specs(snapshot).entities.items()}


def serving_startup(
    metrics: ServingMetrics, *, max_batch_users: int = 1000, now_ms: Clock = system_clock
) -> StartupHook:
    """Returns the start-up hook that puts a FeatureService in `Resources.extras`.

    Runs after the config loader's hook; raises RuntimeError at start-up when the
    process has no online store or no config loader.
    """

    async def start(resources: Resources, stack: AsyncExitStack) -> None:
        loader = resources.config_loader
        if loader is None or resources.online_store is None:
            raise RuntimeError("serving needs the online store and the config loader hook")
        reader = FeatureReader(resources.online_store, metrics)
        resources.extras[FEATURE_SERVICE] = FeatureService(
            loader, reader, snapshot_specs, now_ms, max_batch_users, snapshot_entity_specs
        )
        stack.callback(resources.extras.pop, FEATURE_SERVICE, None)

    return start


def create_app(settings: ServingSettings | None = None, *, now_ms: Clock | None = None) -> FastAPI:
    """Returns the serving app; `now_ms` (epoch ms) defaults to the system clock, tests
    inject one to move time past windows' ends."""
    settings = settings or ServingSettings()
    metrics = ServingMetrics()
    # uvicorn writes its access line whenever "uvicorn.access" reaches a handler (ours
    # are on the root logger): not propagating is what turns it off. One INFO line per
    # read cost ~15% of single-read throughput; /metrics counts requests either way.
    logging.getLogger("uvicorn.access").propagate = settings.access_log
    return build_app(
        settings=settings,
        title="Data Platform Service: feature serving",
        description=(
            "Per-user windowed feature values, merged from time tiles at read time. "
            "A window W is cut into 60 tiles of W/60; a read at `now` counts the events "
            "of the tiles covering (now - W, now], so it may include events up to one "
            "tile (1/60 of the window) older than W."
        ),
        needs=(Backend.CACHE, Backend.CONFIG_STORE, Backend.ONLINE_STORE),
        routers=(serving_router(metrics), metrics_router(metrics.registry)),
        hot_routes=hot_routes(metrics),
        startup=(
            config_loader_hook,
            serving_startup(
                metrics, max_batch_users=settings.max_batch_users, now_ms=now_ms or system_clock
            ),
        ),
    )


def main() -> None:
    """Runs the process with uvicorn on SERVING_HOST:SERVING_PORT."""
    settings = ServingSettings()
    serve(create_app(settings), settings)


if __name__ == "__main__":
    main()
