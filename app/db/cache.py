"""The shared cache and notice board: Redis in production, in process in standalone.

Used for the deployed config (shared copy + change notices), webhook-id replay and
event-id dedup. Rate limiting goes through the `limits` library on the same Redis.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence


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
    async def add_if_absent(self, key: str, ttl_seconds: int) -> bool:
        """Atomically claims the key; returns False if it was already there (dedup)."""

    async def add_many_if_absent(self, keys: Sequence[str], ttl_seconds: int) -> list[bool]:
        """Claims each key as add_if_absent does; returns, per key in order, whether this
        call claimed it. Not atomic as a whole: on error some keys may be claimed.

        The default claims one key at a time; Redis overrides it with one pipeline (a
        2,500-event batch is one round trip instead of 2,500)."""
        return [await self.add_if_absent(key, ttl_seconds) for key in keys]

    @abstractmethod
    async def publish(self, channel: str, message: bytes) -> None:
        """Announces a message to every subscriber."""

    @abstractmethod
    def subscribe(self, channel: str) -> AsyncIterator[bytes]:
        """Yields messages published on the channel until the iterator is closed."""

    @abstractmethod
    def rate_limit_storage_uri(self) -> str:
        """Returns the `limits` storage URI sharing this cache (e.g. `async+redis://...`)."""
