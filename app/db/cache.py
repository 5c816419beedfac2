"""The shared cache and notice board: Redis in production, in process in standalone.

Used for the deployed config (shared copy + change notices), webhook-id replay,
event-id dedup and ingestion's rate limits.

Claims (replay and dedup) are two-phase, so that a claim never says "done" for work
that did not finish: `claim_many` takes absent keys as *pending* for a short TTL, the
caller does the work, then `confirm_many` marks them *done* for the long TTL, or
`release_many` frees them if the work failed. A pending claim whose owner died (or
could not reach the cache to release it) expires by itself.

`admit_many` takes a request's claims *and* its rate-limit charge in one atomic step
(one round trip for any number of requests): a request is admitted whole or refused with
no trace, so a refusal never has claims to release or a charge to undo.

Rate limits are sliding-window counters (the approximation of `limits`'
SlidingWindowCounter, and of Cloudflare's): a window of `window_s` seconds keeps the
count of the current fixed window and of the one before; the count "now" is
`previous * (1 - elapsed / window_s) + current`, and a charge is admitted when that
count plus its cost is at most the limit. O(1) memory per key whatever the limit.
"""

from __future__ import annotations

import enum
import math
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass

# The values a claim key holds. Anything else found under a claim key (e.g. b"1", written
# by the single-phase claims before them) counts as done.
PENDING = b"pending"
DONE = b"done"


class ClaimState(enum.Enum):
    """What `Cache.claim_many` found for one key."""

    CLAIMED = "claimed"
    """The key was absent: this call now holds it, pending."""
    PENDING = "pending"
    """Another caller holds it and has not confirmed it (its work is in flight)."""
    DONE = "done"
    """Confirmed: the work it stands for is finished."""


def claim_state(value: bytes) -> ClaimState:
    """Returns PENDING or DONE for a value found under a claim key."""
    return ClaimState.PENDING if value == PENDING else ClaimState.DONE


@dataclass(frozen=True, slots=True)
class RateWindow:
    """A rate limit: at most `limit` units per sliding `window_s` seconds, counted under
    `key`."""

    key: str
    limit: int
    window_s: int


@dataclass(frozen=True, slots=True)
class Admission:
    """One request's claims and rate-limit charge, taken together or not at all.

    `guard` (the webhook-id's replay key) is claimed with the rest; when it is already
    held the request is refused before anything else is looked at. With `exclusive`, a
    claim found pending refuses the request (a single event another request is
    producing); otherwise each claim's state is reported (a batch's items)."""

    guard: str
    claims: tuple[str, ...] = ()
    windows: tuple[RateWindow, ...] = ()
    cost: int = 0
    exclusive: bool = False


class Verdict(enum.Enum):
    """What `Cache.admit_many` decided for one admission."""

    ADMITTED = "admitted"
    """The guard and every absent claim are now held pending; the cost is charged."""
    GUARD_HELD = "guard_held"
    """The guard was there (`guard_state`: PENDING or DONE); nothing was touched."""
    IN_FLIGHT = "in_flight"
    """`exclusive`, and a claim was pending; nothing was touched."""
    LIMITED = "limited"
    """Window `limited` has no room for the cost; nothing was touched."""


@dataclass(frozen=True, slots=True)
class Admitted:
    """The verdict on one admission. `claims` holds each claim's state when ADMITTED
    (CLAIMED, or what it found: DONE, or PENDING unless exclusive); `retry_after_s` says
    when window `limited` has room for the cost (LIMITED)."""

    verdict: Verdict
    guard_state: ClaimState = ClaimState.CLAIMED
    claims: tuple[ClaimState, ...] = ()
    limited: int | None = None
    retry_after_s: int = 0


def sliding_count(current: float, previous: float, elapsed_s: float, window_s: int) -> float:
    """Returns the sliding-window count `elapsed_s` seconds into the current fixed window."""
    return previous * (window_s - elapsed_s) / window_s + current


def seconds_until_room(
    current: float, previous: float, elapsed_s: float, window_s: int, room: float
) -> int:
    """Returns the whole seconds (at least 1) until the sliding count is at most `room`
    (`limit - cost`, 0 ≤ room < the count now), if nothing else is charged meanwhile.

    Within this window only the previous window's share decays; when the current count
    alone exceeds `room`, the wait runs into the next window, where it is the share that
    decays."""
    if current <= room:
        # previous * (window_s - t) / window_s + current = room, t past the window start
        t = window_s - (room - current) * window_s / previous
        wait = t - elapsed_s
    else:
        wait = (window_s - elapsed_s) + window_s * (1 - room / current)
    return max(1, math.ceil(wait))


class CacheUnavailable(Exception):
    """The cache did not answer."""


class Cache(ABC):
    async def initialize(self) -> None:
        """Connects; idempotent."""

    async def close(self) -> None:
        """Releases connections."""

    @abstractmethod
    async def ping(self) -> None:
        """Returns when the cache answers; raises CacheUnavailable otherwise."""

    @abstractmethod
    async def get(self, key: str) -> bytes | None:
        """Returns the value or None."""

    @abstractmethod
    async def set(self, key: str, value: bytes, ttl_seconds: int | None = None) -> None:
        """Stores the value."""

    @abstractmethod
    async def delete(self, key: str) -> None:
        """Removes the key if present."""

    @abstractmethod
    async def claim_many(self, keys: Sequence[str], pending_ttl_seconds: int) -> list[ClaimState]:
        """Claims every absent key as pending for `pending_ttl_seconds`, atomically as a
        whole; returns, per key in order, CLAIMED (this call holds it) or what it found
        (PENDING, DONE).

        Raises CacheUnavailable (whether the call took effect is then unknown) and
        ValueError for a TTL ≤ 0."""

    @abstractmethod
    async def confirm_many(self, ttls: Mapping[str, int]) -> None:
        """Marks each key done for its TTL (seconds), whatever it held: the work is
        finished, so "done" is true even if its pending claim expired meanwhile.

        Raises CacheUnavailable (some keys may be confirmed) and ValueError for a TTL ≤ 0."""

    @abstractmethod
    async def release_many(self, keys: Sequence[str]) -> None:
        """Deletes the keys that are still pending; a done key stays (its work finished).

        Raises CacheUnavailable (some keys may be released)."""

    @abstractmethod
    async def admit_many(
        self,
        admissions: Sequence[Admission],
        pending_ttl_seconds: int,
        confirm: Mapping[str, int] | None = None,
    ) -> list[Admitted]:
        """Decides each admission in order, each atomically (guard, then pending claims
        if exclusive, then every window, then all of it taken), claims pending for
        `pending_ttl_seconds`; returns one verdict per admission. An admission never sees
        half of another one. `confirm` (key -> TTL) is done first, as by confirm_many,
        in the same call: the admissions see those keys done.

        Raises CacheUnavailable (whether the call took effect is then unknown) and
        ValueError for a TTL ≤ 0."""

    @abstractmethod
    async def publish(self, channel: str, message: bytes) -> None:
        """Announces a message to every subscriber."""

    @abstractmethod
    def subscribe(self, channel: str) -> AsyncIterator[bytes]:
        """Yields messages published on the channel until the iterator is closed."""
