"""The whole platform in one process: `python -m standalone` (what `make run` starts).

Config API, ingestion and serving share one port; compute runs as a background task;
the backends are embedded (SQLite config store, durable SQLite event log, SQLite online
store, in-process cache, chDB analytics), so nothing else needs installing. At start it
prints a development token and the first commands to try.
"""

from __future__ import annotations

import secrets
import sys
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from pydantic import SecretStr

from app.api.v1.router import api_router
from app.core.auth import ALL_PROJECTS, issue_token
from app.core.config_loader import config_loader_hook
from app.core.metrics import metrics_router
from app.core.secrets import secret_provider_hook
from app.core.server import serve
from app.core.service import Backend, Resources, StartupHook, build_app
from app.core.settings import (
    ArchiveSettings,
    IngestionSettings,
    ServingSettings,
    StandaloneSettings,
)
from app.services.training_job_service import training_jobs_startup
from runtime.archive.main import (
    archive_router,
    archive_startup,
    backfill_options,
    backfill_startup,
    options_of,
)
from runtime.archive.metrics import ArchiveMetrics
from runtime.compute.main import compute_router, compute_startup
from runtime.compute.metrics import ComputeMetrics
from runtime.compute.worker import freeze_long_lived_objects, wall_clock_ms
from runtime.ingestion.main import ingestion_startup
from runtime.ingestion.metrics import IngestionMetrics
from runtime.ingestion.routes import hot_routes, ingestion_router
from runtime.serving.main import serving_startup
from runtime.serving.metrics import ServingMetrics
from runtime.serving.routes import hot_routes as serving_hot_routes
from runtime.serving.routes import serving_router


def _with_dev_secret(settings: StandaloneSettings) -> StandaloneSettings:
    """Development without JWT_SECRET: a random secret kept in the data dir, so the
    printed token stays valid across restarts."""
    if settings.auth.secret is not None or settings.environment == "production":
        return settings
    data_dir = Path(settings.backends.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "dev_jwt_secret"
    if not path.exists():
        path.write_text(secrets.token_hex(32))
        path.chmod(0o600)
    auth = settings.auth.model_copy(update={"secret": SecretStr(path.read_text().strip())})
    return settings.model_copy(update={"auth": auth})


def _role_settings(
    settings: StandaloneSettings,
) -> tuple[IngestionSettings, ServingSettings, ArchiveSettings]:
    """The ingestion, serving and archive roles' settings (their own `INGEST_`, `SERVING_`
    and `ARCHIVE_` knobs from the environment) sharing the standalone process's backends
    and auth."""
    shared: dict[str, Any] = {
        "ENVIRONMENT": settings.environment,
        "AUTH_DISABLED": settings.auth_disabled,
        "backends": settings.backends,
        "auth": settings.auth,
        "host": settings.host,
        "port": settings.port,
    }
    return IngestionSettings(**shared), ServingSettings(**shared), ArchiveSettings(**shared)


def _print_welcome(settings: StandaloneSettings) -> StartupHook:
    async def welcome(resources: Resources, stack: AsyncExitStack) -> None:
        token = issue_token(settings.auth, "dev", [ALL_PROJECTS])
        base = f"http://{settings.host}:{settings.port}"
        print(
            "\nData Platform Service (standalone) is up.\n"
            f"  OpenAPI:    {base}/docs\n"
            f"  Dev token:  {token}\n"
            f"  Try:        export TOKEN={token}\n"
            f'              curl -s -H "Authorization: Bearer $TOKEN" '
            f"{base}/api/v1/pipeline-templates\n",
            file=sys.stderr,
            flush=True,
        )

    return welcome


def create_app(
    settings: StandaloneSettings | None = None, *, now_ms: Callable[[], int] | None = None
) -> FastAPI:
    """Returns the one-process app with every role mounted; `now_ms` (epoch ms) is the
    clock of compute and serving, the wall clock unless a test injects one."""
    clock = now_ms or wall_clock_ms
    settings = _with_dev_secret(settings or StandaloneSettings())
    ingestion_settings, serving_settings, archive_settings = _role_settings(settings)
    ingestion_metrics, serving_metrics, compute_metrics = (
        IngestionMetrics(),
        ServingMetrics(),
        ComputeMetrics(),
    )
    # The archive role runs when the process has an archive (ANALYTICS, chdb by default).
    archived = settings.backends.analytics != "none"
    archive_metrics = ArchiveMetrics()
    return build_app(
        settings=settings,
        title="Data Platform Service (standalone)",
        description="Config API, ingestion, compute and serving in one process.",
        needs=(
            Backend.CONFIG_STORE,
            Backend.CACHE,
            Backend.PRODUCER,
            Backend.ONLINE_STORE,
            Backend.ANALYTICS,
        ),
        routers=(
            *api_router(),
            ingestion_router(),
            serving_router(serving_metrics),
            compute_router(),
            *((archive_router(),) if archived else ()),
            metrics_router(
                ingestion_metrics.registry,
                serving_metrics.registry,
                compute_metrics.registry,
                *((archive_metrics.registry,) if archived else ()),
            ),
        ),
        hot_routes=(*hot_routes(), *serving_hot_routes(serving_metrics)),
        startup=(
            config_loader_hook,
            secret_provider_hook,
            ingestion_startup(ingestion_settings, ingestion_metrics),
            serving_startup(
                serving_metrics, max_batch_users=serving_settings.max_batch_users, now_ms=clock
            ),
            compute_startup(compute_metrics, now_ms=clock),
            *(
                (
                    archive_startup(
                        archive_metrics,
                        group=archive_settings.consumer_group,
                        options=options_of(archive_settings),
                    ),
                    *(
                        (
                            backfill_startup(
                                backfill_options(archive_settings),
                                chunk_users=archive_settings.backfill_chunk_users,
                            ),
                        )
                        if archive_settings.backfill
                        else ()
                    ),
                )
                if archived
                else ()
            ),
            training_jobs_startup(
                settings.training_job_stale_seconds, settings.training_job_chunk_users
            ),
            _print_welcome(settings),
        ),
        cors_origins=settings.cors_origins,
    )


def main() -> None:
    """Runs the standalone process under uvicorn."""
    settings = StandaloneSettings()
    app = create_app(settings)
    # Process-wide GC policy belongs to the process entry, not to the worker class.
    freeze_long_lived_objects()
    serve(app, settings)


if __name__ == "__main__":
    main()
