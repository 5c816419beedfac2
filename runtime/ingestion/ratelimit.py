"""Event rate limits per project and per pipeline, through the `limits` library.

Strategy: `SlidingWindowCounterRateLimiter` (two counters per key, O(1) memory whatever the
limit; the moving window would keep one list entry per event, 2,500 per batch). Storage:
the cache's `rate_limit_storage_uri()` (Redis in production, shared by every ingestion
replica; in process in standalone).

A request costs its event count (1, or the batch size). A single event meets the limit
after validation and the replay check (runtime/ingestion/service.py), so an invalid or
replayed one is refused without being charged; a batch is charged before its items are
validated (all of them count). The pipeline limit is charged
first, then the project limit: a pipeline that exhausted its own limit keeps being
refused without eating the budget of the project's other pipelines. (A request refused
by the project limit has already been charged to its pipeline; that is the cheaper
mistake.) A project listed in INGEST_RATE_LIMIT_OVERRIDES uses its override for both.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from typing import Any, Literal

from limits import RateLimitItem, parse
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.errors import StorageError
from limits.storage import storage_from_string
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from app.core.errors import RateLimited, ServiceUnavailable

Scope = Literal["project", "pipeline"]
# Redis clients reconnect on the next call: a retry a second later may be served.
_UNAVAILABLE_RETRY_AFTER_S = 1


logger = logging.getLogger(__name__)


def parse_limit(value: str) -> RateLimitItem:
    """Returns the parsed limit (`"6000/minute"`, `"100 per second"`); raises ValueError."""
    try:
        return parse(value)
    except ValueError as exc:
        raise ValueError(f"invalid rate limit {value!r}: {exc}") from None


class IngestRateLimiter:
    """Charges events against the project's and the pipeline's sliding windows."""

    def __init__(
        self,
        storage_uri: str,
        *,
        project_limit: str,
        pipeline_limit: str,
        overrides: dict[str, str] | None = None,
        on_limited: Callable[[Scope], None] | None = None,
    ) -> None:
        """Raises ValueError for an unparseable limit string."""
        options: dict[str, Any] = {"wrap_exceptions": True}
        if storage_uri.startswith(("async+redis://", "async+rediss://")):
            # `limits` defaults to the coredis driver; redis-py is the one installed.
            # Fail fast like the rest of the cache: no request waits on a dead Redis
            # (a frozen one is a 503 after the 1 s read timeout, not retried).
            # Heal at once: after a Redis restart every pooled connection is dead, and
            # without a retry each one failed one request (503s for ~10 s of client
            # retries); one immediate retry on a fresh connection serves the request.
            # A charge retried after its reply was lost may count twice: the cheaper
            # mistake for a limit.
            options |= {
                "implementation": "redispy",
                "socket_connect_timeout": 1.0,
                "socket_timeout": 1.0,
                "retry": Retry(NoBackoff(), retries=1, supported_errors=(RedisConnectionError,)),
            }
        self._storage = storage_from_string(storage_uri, **options)
        self._limiter = SlidingWindowCounterRateLimiter(self._storage)
        self._project = parse_limit(project_limit)
        self._pipeline = parse_limit(pipeline_limit)
        self._overrides = {p: parse_limit(v) for p, v in (overrides or {}).items()}
        self._on_limited = on_limited

    def limits_for(self, project_id: str) -> tuple[RateLimitItem, RateLimitItem]:
        """Returns (project limit, pipeline limit) for the project."""
        override = self._overrides.get(project_id)
        if override is not None:
            return override, override
        return self._project, self._pipeline

    async def charge(self, project_id: str, pipeline_id: str, cost: int) -> None:
        """Returns when `cost` events fit both windows (and charges them).

        Raises RateLimited (429, Retry-After in whole seconds; `on_limited(scope)` is
        called first) or ServiceUnavailable when the storage does not answer.
        """
        project_item, pipeline_item = self.limits_for(project_id)
        checks: tuple[tuple[Scope, RateLimitItem, tuple[str, ...]], ...] = (
            ("pipeline", pipeline_item, (project_id, pipeline_id)),
            ("project", project_item, (project_id,)),
        )
        for scope, item, ids in checks:
            if cost > item.amount:
                self._limited(scope)
                raise _refusal(
                    f"{cost} events exceed the {scope} limit of {item} even in an empty "
                    "window; send smaller batches",
                    item.get_expiry(),
                )
            try:
                if await self._limiter.hit(item, scope, *ids, cost=cost):
                    continue
                stats = await self._limiter.get_window_stats(item, scope, *ids)
            except StorageError as exc:
                raise ServiceUnavailable(
                    f"Rate limit storage is unavailable: {type(exc.storage_error).__name__}",
                    headers={"Retry-After": str(_UNAVAILABLE_RETRY_AFTER_S)},
                ) from exc
            except RuntimeError as exc:
                # redis-py on uvloop: a pooled connection whose transport Redis closed
                # (killed mid-stream) raises uvloop's RuntimeError "the handler is
                # closed" from the reconnect, which `limits` does not wrap. Found by the
                # Redis fault test as a 500. Only this storage call is guarded; the
                # traceback is logged in case it is anything else.
                logger.warning("rate limit storage failed", exc_info=exc)
                raise ServiceUnavailable(
                    "Rate limit storage is unavailable: its connection was closed",
                    headers={"Retry-After": str(_UNAVAILABLE_RETRY_AFTER_S)},
                ) from exc
            wait = max(1, math.ceil(stats.reset_time - time.time()))
            self._limited(scope)
            raise _refusal(f"The {scope} limit of {item} is exhausted", wait)

    def _limited(self, scope: Scope) -> None:
        if self._on_limited is not None:
            self._on_limited(scope)

    async def close(self) -> None:
        """Releases the storage's connections (Redis); idempotent."""
        bridge = getattr(self._storage, "bridge", None)
        client = getattr(bridge, "storage", None)
        aclose = getattr(client, "aclose", None)
        if aclose is not None:
            # Closing a connection to a Redis that went away is not an error.
            with contextlib.suppress(Exception):
                await aclose()


def _refusal(detail: str, retry_after_s: int) -> RateLimited:
    return RateLimited(detail, headers={"Retry-After": str(retry_after_s)})
