"""The ingestion process: `python -m runtime.ingestion.main` (port 8001).

Reads the deployed config (config loader) and the pipelines' signing secrets (secret
provider) from Redis, with the config store behind them; writes accepted events to the
event log and replay/dedup/rate-limit state to the cache. `ingestion_startup`,
`ingestion_router` and its `hot_routes` are also what the standalone process mounts.
"""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack

from fastapi import FastAPI

from app.core.config_loader import config_loader_hook
from app.core.secrets import secret_provider_hook
from app.core.server import serve
from app.core.service import Backend, Resources, StartupHook, build_app
from app.core.settings import IngestionSettings
from runtime.ingestion.metrics import IngestionMetrics, metrics_router
from runtime.ingestion.producer import EventSink
from runtime.ingestion.ratelimit import RateLimits
from runtime.ingestion.routes import INGESTION_SERVICE, hot_routes, ingestion_router
from runtime.ingestion.service import IngestionService
from runtime.ingestion.signature import MAX_TOLERANCE_SECONDS


def ingestion_startup(settings: IngestionSettings, metrics: IngestionMetrics) -> StartupHook:
    """Returns the start-up hook that puts an IngestionService in `Resources.extras`.

    Runs after `config_loader_hook` and `secret_provider_hook`. Raises at start-up
    (RuntimeError, ValueError) when a backend or hook is missing, a rate limit does not
    parse, or the signature tolerance exceeds the standard's 300 s.
    """

    async def start(resources: Resources, stack: AsyncExitStack) -> None:
        loader = resources.config_loader
        secrets = resources.secret_provider
        if loader is None or secrets is None:
            raise RuntimeError("ingestion needs the config loader and secret provider hooks")
        if resources.cache is None or resources.producer is None:
            raise RuntimeError("ingestion needs Backend.CACHE and Backend.PRODUCER")
        if not 0 < settings.signature_tolerance_seconds <= MAX_TOLERANCE_SECONDS:
            raise ValueError(
                f"INGEST_SIGNATURE_TOLERANCE_SECONDS must be 1..{MAX_TOLERANCE_SECONDS} "
                "(Standard Webhooks' tolerance)"
            )

        def on_limited(scope: str) -> None:
            metrics.rate_limited.labels(scope=scope).inc()

        limits = RateLimits(
            project_limit=settings.rate_limit_project,
            pipeline_limit=settings.rate_limit_pipeline,
            overrides=settings.rate_limit_overrides,
            on_limited=on_limited,
        )
        service = IngestionService(
            settings,
            configs=loader,
            secrets=secrets,
            cache=resources.cache,
            sink=EventSink(resources.producer, metrics, timeout_s=settings.produce_timeout_seconds),
            limits=limits,
            metrics=metrics,
        )
        resources.extras[INGESTION_SERVICE] = service
        # Unwound before the cache closes (opened earlier): answered requests' confirms
        # are sent first.
        stack.push_async_callback(service.drain)
        stack.callback(resources.extras.pop, INGESTION_SERVICE, None)

    return start


def create_app(settings: IngestionSettings | None = None) -> FastAPI:
    """Returns the ingestion app (settings from the environment when not given)."""
    settings = settings or IngestionSettings()
    metrics = IngestionMetrics()
    # uvicorn writes its access line whenever "uvicorn.access" reaches a handler (ours
    # are on the root logger): not propagating is what turns it off. /metrics counts
    # requests and refusals either way; refusals are logged by the routes.
    logging.getLogger("uvicorn.access").propagate = settings.access_log
    return build_app(
        settings=settings,
        title="Data Platform Service: event ingestion",
        description=(
            "Signed storefront webhooks (Standard Webhooks), validated against the deployed "
            "config, deduplicated by event id, rate limited per project and pipeline, and "
            "acknowledged only once the event log stored them."
        ),
        needs=(Backend.CACHE, Backend.CONFIG_STORE, Backend.PRODUCER),
        routers=(ingestion_router(), metrics_router(metrics.registry)),
        hot_routes=hot_routes(),
        startup=(
            config_loader_hook,
            secret_provider_hook,
            ingestion_startup(settings, metrics),
        ),
    )


def main() -> None:
    """Runs the ingestion process under uvicorn on the settings' host and port."""
    settings = IngestionSettings()
    serve(create_app(settings), settings)


if __name__ == "__main__":
    main()
