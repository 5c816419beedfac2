"""`GET /metrics`: Prometheus text for one or more per-app registries.

Each role keeps its own CollectorRegistry (several apps can live in one test process
without clashing); the standalone process exposes all of its roles' registries at once.
"""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


def metrics_router(*registries: CollectorRegistry) -> APIRouter:
    """Returns a router with `GET /metrics` exposing every registry given."""
    router = APIRouter(tags=["health"])

    @router.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def metrics() -> Response:
        body = b"".join(generate_latest(registry) for registry in registries)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return router
