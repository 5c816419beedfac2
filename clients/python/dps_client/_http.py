"""The retry loop around one request, in a sync and an async flavour, and the client
construction both share. Each attempt calls `send()` again, so a sender can sign every
attempt anew (fresh webhook-id and timestamp, same event ids)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import httpx

from dps_client.errors import ApiError, ConnectionFailed
from dps_client.retry import TRANSIENT_ERRORS, RetryPolicy, is_retryable

USER_AGENT = "dps-client/0.1"
# One pool per client: keep-alive connections are reused across calls (the point of
# holding a client rather than calling httpx.get), bounded so a burst cannot open
# thousands of sockets.
LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20)


def _outcome(
    response: httpx.Response | None,
    error: Exception | None,
    attempt: int,
    policy: RetryPolicy,
    in_flight: bool,
) -> float | None:
    """Returns the seconds to wait before the next attempt, or None when `response` is
    final. Raises when the last attempt failed."""
    last = attempt + 1 >= policy.attempts
    if response is None:
        if last:
            raise ConnectionFailed(f"{type(error).__name__}: {error}") from error
        return policy.delay(attempt, None)
    if response.status_code < 400:
        return None
    if last or not is_retryable(response, in_flight=in_flight):
        raise ApiError.from_response(response)
    return policy.delay(attempt, ApiError.from_response(response).retry_after)


def call(
    send: Callable[[], httpx.Response], policy: RetryPolicy, *, in_flight: bool = False
) -> httpx.Response:
    """Runs `send` until it answers 2xx/3xx or a final error; raises ApiError or
    ConnectionFailed."""
    for attempt in range(policy.attempts):
        response: httpx.Response | None = None
        error: Exception | None = None
        try:
            response = send()
        except TRANSIENT_ERRORS as exc:
            error = exc
        wait = _outcome(response, error, attempt, policy, in_flight)
        if wait is None:
            assert response is not None
            return response
        time.sleep(wait)
    raise AssertionError("unreachable: the last attempt returns or raises")


async def acall(
    send: Callable[[], Awaitable[httpx.Response]],
    policy: RetryPolicy,
    *,
    in_flight: bool = False,
) -> httpx.Response:
    """`call` for coroutines."""
    for attempt in range(policy.attempts):
        response: httpx.Response | None = None
        error: Exception | None = None
        try:
            response = await send()
        except TRANSIENT_ERRORS as exc:
            error = exc
        wait = _outcome(response, error, attempt, policy, in_flight)
        if wait is None:
            assert response is not None
            return response
        await asyncio.sleep(wait)
    raise AssertionError("unreachable: the last attempt returns or raises")


def bearer(token: str | None) -> dict[str, str]:
    headers = {"User-Agent": USER_AGENT}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return headers
