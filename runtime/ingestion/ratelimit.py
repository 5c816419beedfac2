"""Event rate limits per project and per pipeline: the windows a request is charged to.

The charge itself is taken by the cache together with the request's claims, in one
atomic step (`Cache.admit_many`: one Redis round trip, the sliding-window counter of
app/db/cache.py, on Redis' clock so every ingestion replica shares the windows). A
refused request is charged nothing and holds no claim.

A request costs its event count (1, or the batch size). A single event is charged after
validation and the replay check, so an invalid or replayed one is refused without being
charged, as is one whose event id another request is producing; a duplicate is charged.
A batch is charged after its JSON is read and before its items are validated (all of
them count). Both windows must have room: the pipeline's, then the project's, so a
pipeline that exhausted its own limit is refused without eating the budget of the
project's other pipelines. A project listed in INGEST_RATE_LIMIT_OVERRIDES uses its
override for both. Limits are written as `limits` parses them: `"6000/minute"`,
`"100 per second"`, `"10/5 seconds"`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from limits import RateLimitItem, parse

from app.core.errors import RateLimited
from app.db.cache import Admitted, RateWindow

Scope = Literal["project", "pipeline"]
# In the order they are checked (and reported by `Admitted.limited`).
SCOPES: tuple[Scope, Scope] = ("pipeline", "project")


def parse_limit(value: str) -> RateLimitItem:
    """Returns the parsed limit (`"6000/minute"`, `"100 per second"`); raises ValueError."""
    try:
        item = parse(value)
    except ValueError as exc:
        raise ValueError(f"invalid rate limit {value!r}: {exc}") from None
    if item.amount < 1:
        raise ValueError(f"invalid rate limit {value!r}: it admits nothing")
    return item


def window_key(scope: Scope, project_id: str, pipeline_id: str) -> str:
    """Returns the cache key of a scope's window."""
    if scope == "project":
        return f"dps:rl:project:{project_id}"
    return f"dps:rl:pipeline:{project_id}:{pipeline_id}"


class RateLimits:
    """The limits of every project and pipeline, as cache windows and 429 refusals."""

    def __init__(
        self,
        *,
        project_limit: str,
        pipeline_limit: str,
        overrides: dict[str, str] | None = None,
        on_limited: Callable[[Scope], None] | None = None,
    ) -> None:
        """Raises ValueError for an unparseable limit string."""
        self._project = parse_limit(project_limit)
        self._pipeline = parse_limit(pipeline_limit)
        self._overrides = {p: parse_limit(v) for p, v in (overrides or {}).items()}
        self._on_limited = on_limited
        # A single event's windows, per (project, pipeline): built once (~2% of a single
        # event's CPU when built per request). Ids were checked against the deployed
        # config, so the map holds deployed pipelines only.
        self._single: dict[tuple[str, str], tuple[RateWindow, ...]] = {}

    def limits_for(self, project_id: str) -> tuple[RateLimitItem, RateLimitItem]:
        """Returns (pipeline limit, project limit) for the project, in SCOPES order."""
        override = self._overrides.get(project_id)
        if override is not None:
            return override, override
        return self._pipeline, self._project

    def windows(self, project_id: str, pipeline_id: str, cost: int) -> tuple[RateWindow, ...]:
        """Returns the windows a request of `cost` events is charged to, in SCOPES order.

        Raises RateLimited (429) when `cost` exceeds a limit even in an empty window."""
        if cost == 1:
            single = self._single.get((project_id, pipeline_id))
            if single is None:
                single = self._single[project_id, pipeline_id] = self._windows(
                    project_id, pipeline_id, 1
                )
            return single
        return self._windows(project_id, pipeline_id, cost)

    def _windows(self, project_id: str, pipeline_id: str, cost: int) -> tuple[RateWindow, ...]:
        windows = []
        for scope, item in zip(SCOPES, self.limits_for(project_id), strict=True):
            if cost > item.amount:
                self._limited(scope)
                raise _refusal(
                    f"{cost} events exceed the {scope} limit of {item} even in an empty "
                    "window; send smaller batches",
                    item.get_expiry(),
                )
            key = window_key(scope, project_id, pipeline_id)
            windows.append(RateWindow(key, item.amount, item.get_expiry()))
        return tuple(windows)

    def refusal(self, project_id: str, admitted: Admitted) -> RateLimited:
        """Returns the 429 for an admission refused by window `admitted.limited`, with
        Retry-After (whole seconds until the window has room); counts it."""
        assert admitted.limited is not None
        scope = SCOPES[admitted.limited]
        self._limited(scope)
        item = self.limits_for(project_id)[admitted.limited]
        return _refusal(f"The {scope} limit of {item} is exhausted", admitted.retry_after_s)

    def _limited(self, scope: Scope) -> None:
        if self._on_limited is not None:
            self._on_limited(scope)


def _refusal(detail: str, retry_after_s: int) -> RateLimited:
    return RateLimited(detail, headers={"Retry-After": str(retry_after_s)})
