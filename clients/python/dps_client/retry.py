"""When and how long to wait before trying again: shared by the sync and async clients.

Retried: connection errors and timeouts, 503 (a backend is down; nothing was accepted)
and 429 (rate limited), plus 409 `EventInFlight` for events (another request is producing
the same event id right now). The wait is the answer's `Retry-After` when it has one,
capped at `max_delay`; otherwise exponential backoff with full jitter (AWS's
"exponential backoff and jitter"), so many clients retrying after one outage spread out.
Anything else (401, 404, 422...) is a permanent answer and raised at once.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import httpx

RETRYABLE_STATUS = frozenset({429, 503})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """`attempts` counts the first try (1 = no retry)."""

    attempts: int = 4
    base_delay: float = 0.1
    max_delay: float = 10.0

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait after failed attempt number `attempt` (0-based)."""
        if retry_after is not None:
            return min(retry_after, self.max_delay)
        return random.uniform(0, min(self.max_delay, self.base_delay * 2**attempt))


NO_RETRY = RetryPolicy(attempts=1)


def is_retryable(response: httpx.Response, *, in_flight: bool = False) -> bool:
    """Whether an answer is worth retrying unchanged; `in_flight` adds 409 EventInFlight
    (only senders of events, whose retry carries the same event id, should)."""
    if response.status_code in RETRYABLE_STATUS:
        return True
    if in_flight and response.status_code == 409:
        try:
            return bool(response.json().get("error") == "EventInFlight")
        except ValueError:
            return False
    return False


# What a retry can cure. A timeout after a request was sent may have been processed:
# retrying is safe for reads and for events (same event id), which is all this retries.
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (httpx.TransportError,)
