"""Building a process's FastAPI app: clients made in `lifespan`, health and readiness,
the error envelope, JSON logs. Every process (config API, ingestion, compute's small
HTTP port, serving, standalone) is assembled here from the backends it needs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from app.core.auth import TokenVerifier
from app.core.docs import install_docs
from app.core.errors import ErrorEnvelope, ServiceUnavailable, install_error_handlers
from app.core.limits import RequestLimits
from app.core.logging import configure_logging
from app.core.routing import HotRoute, HotRoutes
from app.core.settings import ServiceSettings
from app.db import factory
from app.db.analytics import AnalyticsSink
from app.db.cache import Cache
from app.db.config_store import ConfigStore
from app.db.event_log import EventLogProducer
from app.db.online_store import OnlineStore

if TYPE_CHECKING:  # the loader and provider import this module for their hooks
    from app.core.config_loader import ConfigLoader
    from app.core.secrets import SecretProvider
    from app.services.training_job_service import TrainingJobs


class Backend(StrEnum):
    CONFIG_STORE = "config_store"
    CACHE = "cache"
    PRODUCER = "event_log"
    ONLINE_STORE = "online_store"
    ANALYTICS = "analytics"


@dataclass
class Resources:
    """The clients a process built at start-up. Absent ones are None."""

    settings: ServiceSettings
    config_store: ConfigStore | None = None
    cache: Cache | None = None
    producer: EventLogProducer | None = None
    online_store: OnlineStore | None = None
    analytics: AnalyticsSink | None = None
    # Shared by the runtimes, set by config_loader_hook / secret_provider_hook.
    config_loader: ConfigLoader | None = None
    secret_provider: SecretProvider | None = None
    # The config API's training-set jobs (None without an event archive).
    training_jobs: TrainingJobs | None = None
    # Anything a role adds at start-up for itself (its service, consumer task...).
    extras: dict[str, Any] = field(default_factory=dict)
    # Readiness checks a role adds at start-up beside the backends' pings (compute's
    # consumer loop): name -> coroutine that returns when healthy, raises otherwise.
    checks: dict[str, Callable[[], Awaitable[None]]] = field(default_factory=dict)

    def pings(self) -> dict[str, Callable[[], Awaitable[None]]]:
        candidates: dict[str, Any] = {
            Backend.CONFIG_STORE: self.config_store,
            Backend.CACHE: self.cache,
            Backend.PRODUCER: self.producer,
            Backend.ONLINE_STORE: self.online_store,
            Backend.ANALYTICS: self.analytics,
        }
        pings = {name: c.ping for name, c in candidates.items() if c is not None}
        return pings | self.checks


# A start-up hook gets the resources and the exit stack, so what it starts it also stops.
StartupHook = Callable[[Resources, AsyncExitStack], Awaitable[None]]


async def open_backends(
    settings: ServiceSettings, needs: Iterable[Backend], stack: AsyncExitStack
) -> Resources:
    """Builds and starts the requested backends; each is closed when `stack` unwinds."""
    wanted = set(needs)
    b = settings.backends
    res = Resources(settings=settings)
    if Backend.CONFIG_STORE in wanted:
        res.config_store = factory.make_config_store(b)
        await res.config_store.initialize()
        stack.push_async_callback(res.config_store.close)
    if Backend.CACHE in wanted:
        res.cache = factory.make_cache(b)
        await res.cache.initialize()
        stack.push_async_callback(res.cache.close)
    if Backend.PRODUCER in wanted:
        res.producer = factory.make_producer(b)
        await res.producer.start()
        stack.push_async_callback(res.producer.stop)
    if Backend.ONLINE_STORE in wanted:
        res.online_store = factory.make_online_store(b)
        await res.online_store.initialize()
        stack.push_async_callback(res.online_store.close)
    if Backend.ANALYTICS in wanted:
        res.analytics = factory.make_analytics(b)
        if res.analytics is not None:
            await res.analytics.initialize()
            stack.push_async_callback(res.analytics.close)
    return res


class BackendStatus(BaseModel):
    ok: bool
    latency_ms: float
    error: str | None = None


class ReadyStatus(BaseModel):
    status: str
    backends: dict[str, BackendStatus]


async def _check(ping: Callable[[], Awaitable[None]], limit_s: float) -> BackendStatus:
    started = time.perf_counter()
    try:
        await asyncio.wait_for(ping(), limit_s)
    except Exception as exc:  # readiness reports any failure of a backend, it never raises
        elapsed = (time.perf_counter() - started) * 1000
        return BackendStatus(ok=False, latency_ms=round(elapsed, 2), error=type(exc).__name__)
    return BackendStatus(ok=True, latency_ms=round((time.perf_counter() - started) * 1000, 2))


async def readiness(resources: Resources, limit_s: float = 2.0) -> ReadyStatus:
    """Pings every backend concurrently."""
    pings = resources.pings()
    results = await asyncio.gather(*(_check(p, limit_s) for p in pings.values()))
    backends = dict(zip(pings, results, strict=True))
    status = "ready" if all(r.ok for r in results) else "unavailable"
    return ReadyStatus(status=status, backends=backends)


def health_router() -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/health", summary="Liveness: the process is up")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @router.get(
        "/ready",
        summary="Readiness: every backend answers",
        response_model=ReadyStatus,
        responses={503: {"model": ReadyStatus}},
    )
    async def ready(request: Request) -> JSONResponse:
        status = await readiness(get_resources(request))
        code = 200 if status.status == "ready" else 503
        return JSONResponse(status.model_dump(), status_code=code)

    return router


def get_resources(request: Request) -> Resources:
    """The running process's resources (tests override what they need)."""
    resources: Resources | None = getattr(request.app.state, "resources", None)
    if resources is None:
        raise ServiceUnavailable("Service is starting")
    return resources


def build_app(
    *,
    settings: ServiceSettings,
    title: str,
    description: str,
    needs: Iterable[Backend],
    routers: Iterable[APIRouter] = (),
    startup: Iterable[StartupHook] = (),
    cors_origins: Sequence[str] = (),
    hot_routes: Sequence[HotRoute] = (),
) -> FastAPI:
    """Assembles a process: backends opened in lifespan, then the start-up hooks in order;
    everything is closed in reverse order on shutdown. `cors_origins` lets a browser
    dashboard on those origins call the API with its bearer token. `hot_routes` are
    answered just inside the request limits, before the router (app/core/routing.py);
    they must also be declared on one of `routers`, for OpenAPI."""
    configure_logging(settings.log_level)
    wanted = tuple(needs)
    hooks = tuple(startup)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            resources = await open_backends(settings, wanted, stack)
            for hook in hooks:
                await hook(resources, stack)
            app.state.resources = resources
            try:
                yield
            finally:
                app.state.resources = None

    app = FastAPI(
        title=title,
        description=description,
        version="0.1.0",
        lifespan=lifespan,
        responses={422: {"model": ErrorEnvelope}, 500: {"model": ErrorEnvelope}},
        # Served by install_docs from packaged assets: FastAPI's own pages need a CDN.
        docs_url=None,
        redoc_url=None,
    )
    install_docs(app)
    app.state.settings = settings
    app.state.token_verifier = TokenVerifier(settings.auth)
    app.state.resources = None
    install_error_handlers(app)
    if hot_routes:  # inside CORS, so a browser's reads of hot routes get its headers
        app.add_middleware(HotRoutes, routes=hot_routes, exception_handlers=app.exception_handlers)
    if cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cors_origins),
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
            max_age=600,
        )
    # Added last, so it runs first: no route, dependency (auth) or parser sees a body
    # over the process's limit or JSON nested too deep (app/core/limits.py).
    app.add_middleware(RequestLimits, max_body_bytes=settings.max_body_bytes)
    app.include_router(health_router())
    for router in routers:
        app.include_router(router)
    return app
