"""The shared cache and notice board: Redis in production, in process in standalone.

Used for the deployed config (shared copy + change notices), webhook-id replay and
event-id dedup. Rate limiting goes through the `limits` library on the same Redis.

Claims (replay and dedup) are two-phase, so that a claim never says "done" for work
that did not finish: `claim_many` takes absent keys as *pending* for a short TTL, the
caller does the work, then `confirm_many` marks them *done* for the long TTL, or
`release_many` frees them if the work failed. A pending claim whose owner died (or
could not reach the cache to release it) expires by itself.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping, Sequence

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
    SKIPPED = "skipped"
    """Not tried: the guard key (the first, with `guarded=True`) was already there."""


def claim_state(value: bytes) -> ClaimState:
    """Returns PENDING or DONE for a value found under a claim key."""
    return ClaimState.PENDING if value == PENDING else ClaimState.DONE


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
    async def claim_many(
        self, keys: Sequence[str], pending_ttl_seconds: int, *, guarded: bool = False
    ) -> list[ClaimState]:
        """Claims every absent key as pending for `pending_ttl_seconds`, atomically as a
        whole; returns, per key in order, CLAIMED (this call holds it) or what it found
        (PENDING, DONE). With `guarded`, the first key guards the rest: when it is
        already there, no other key is touched and they are all SKIPPED.

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
    async def publish(self, channel: str, message: bytes) -> None:
        """Announces a message to every subscriber."""

    @abstractmethod
    def subscribe(self, channel: str) -> AsyncIterator[bytes]:
        """Yields messages published on the channel until the iterator is closed."""

    @abstractmethod
    def rate_limit_storage_uri(self) -> str:
        """Returns the `limits` storage URI sharing this cache (e.g. `async+redis://...`)."""
