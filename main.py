"""The config API process: `python -m main` (port 8000).

`uvicorn main:app` works too, but only `python -m main` runs with the limits every process
shares (request head size, shutdown deadline: app/core/server.py)."""

from __future__ import annotations

from fastapi import FastAPI

from app.api.v1.router import api_router
from app.core.server import serve
from app.core.service import Backend, build_app
from app.core.settings import ConfigApiSettings
from app.services.training_job_service import training_jobs_startup


def create_app(settings: ConfigApiSettings | None = None) -> FastAPI:
    settings = settings or ConfigApiSettings()
    return build_app(
        settings=settings,
        title="Data Platform Service: config API",
        description="Pipelines, event schemas, feature definitions and deployments.",
        # The online store and the archive serve rebuilds and training sets only.
        needs=(Backend.CONFIG_STORE, Backend.CACHE, Backend.ONLINE_STORE, Backend.ANALYTICS),
        routers=api_router(),
        startup=(
            training_jobs_startup(
                settings.training_job_stale_seconds, settings.training_job_chunk_users
            ),
        ),
        cors_origins=settings.cors_origins,
    )


def main() -> None:
    """Runs the config API under uvicorn on API_HOST:API_PORT."""
    settings = ConfigApiSettings()
    serve(create_app(settings), settings)


def __getattr__(name: str) -> FastAPI:
    # `uvicorn main:app` reads this attribute; building it lazily keeps importing the
    # module free of side effects (tests build their own app with create_app()).
    if name == "app":
        return create_app()
    raise AttributeError(name)


if __name__ == "__main__":
    main()
