"""The in-process cache for standalone mode: one process, so one dict is the shared copy.

TTLs use the monotonic clock. Expired keys are dropped when read and, so that
write-only keys (dedup claims nobody reads again) do not pile up, by a sweep of an
expiry heap on every write. Pub/sub fans each message out to one asyncio queue per
subscriber; like Redis, only subscribers present at publish time get it.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections.abc import AsyncGenerator, Mapping, Sequence

from app.core.settings import BackendSettings
from app.db.cache import (
    DONE,
    PENDING,
    Admission,
    Admitted,
    Cache,
    ClaimState,
    RateWindow,
    Verdict,
    claim_state,
    seconds_until_room,
    sliding_count,
)

# A subscriber that stops reading must not grow memory without bound: past this many
# pending messages the oldest is dropped (notices are "something changed" pings, so
# the newest is the one that matters).
_SUBSCRIBER_QUEUE_MAX = 1024


class MemoryCache(Cache):
    """Dict with TTLs and asyncio-queue pub/sub; never unavailable."""

    def __init__(self, settings: BackendSettings | None = None) -> None:
        self._values: dict[str, tuple[bytes, float | None]] = {}
        # (expires_at, key): may hold stale entries for keys rewritten since; the
        # sweep checks the dict before deleting.
        self._expiries: list[tuple[float, str]] = []
        self._subscribers: dict[str, set[asyncio.Queue[bytes]]] = {}
        # Rate windows: key -> (fixed window index, its count, the previous one's count).
        # One entry per project and pipeline, so they are never swept.
        self._windows: dict[str, tuple[int, int, int]] = {}

    async def ping(self) -> None:
        """Always answers."""

    def _live(self, key: str, now: float) -> bytes | None:
        entry = self._values.get(key)
        if entry is None:
            return None
        value, expires_at = entry
        if expires_at is not None and expires_at <= now:
            del self._values[key]
            return None
        return value

    def _store(self, key: str, value: bytes, ttl_seconds: int | None, now: float) -> None:
        self._sweep(now)
        expires_at = None if ttl_seconds is None else now + ttl_seconds
        self._values[key] = (value, expires_at)
        if expires_at is not None:
            heapq.heappush(self._expiries, (expires_at, key))

    def _sweep(self, now: float) -> None:
        while self._expiries and self._expiries[0][0] <= now:
            expires_at, key = heapq.heappop(self._expiries)
            entry = self._values.get(key)
            if entry is not None and entry[1] == expires_at:
                del self._values[key]

    async def get(self, key: str) -> bytes | None:
        """Returns the value or None if absent or expired."""
        return self._live(key, time.monotonic())

    async def set(self, key: str, value: bytes, ttl_seconds: int | None = None) -> None:
        """Stores the value, replacing any TTL; ValueError for ttl ≤ 0."""
        if ttl_seconds is not None and ttl_seconds <= 0:
            raise ValueError("ttl_seconds must be positive (or None for no expiry)")
        self._store(key, bytes(value), ttl_seconds, time.monotonic())

    async def delete(self, key: str) -> None:
        """Removes the key if present."""
        self._values.pop(key, None)

    async def claim_many(self, keys: Sequence[str], pending_ttl_seconds: int) -> list[ClaimState]:
        """See Cache.claim_many; atomic because nothing here awaits. ValueError for ttl ≤ 0."""
        if pending_ttl_seconds <= 0:
            raise ValueError("pending_ttl_seconds must be positive")
        now = time.monotonic()
        states: list[ClaimState] = []
        for key in keys:
            value = self._live(key, now)
            if value is None:
                self._store(key, PENDING, pending_ttl_seconds, now)
                states.append(ClaimState.CLAIMED)
                continue
            states.append(claim_state(value))
        return states

    async def confirm_many(self, ttls: Mapping[str, int]) -> None:
        """Marks each key done for its TTL; ValueError for ttl ≤ 0 (nothing is written)."""
        if any(ttl <= 0 for ttl in ttls.values()):
            raise ValueError("ttl_seconds must be positive")
        now = time.monotonic()
        for key, ttl in ttls.items():
            self._store(key, DONE, ttl, now)

    async def release_many(self, keys: Sequence[str]) -> None:
        """Deletes the keys that are still pending."""
        now = time.monotonic()
        for key in keys:
            if self._live(key, now) == PENDING:
                del self._values[key]

    async def admit_many(
        self,
        admissions: Sequence[Admission],
        pending_ttl_seconds: int,
        confirm: Mapping[str, int] | None = None,
    ) -> list[Admitted]:
        """See Cache.admit_many; atomic because nothing here awaits. Windows follow the
        wall clock (as Redis' TIME does); ValueError for ttl ≤ 0."""
        if pending_ttl_seconds <= 0:
            raise ValueError("pending_ttl_seconds must be positive")
        if confirm:
            await self.confirm_many(confirm)
        return [self._admit(a, pending_ttl_seconds) for a in admissions]

    def _admit(self, admission: Admission, ttl: int) -> Admitted:
        now, wall = time.monotonic(), time.time()
        guard = self._live(admission.guard, now)
        if guard is not None:
            return Admitted(Verdict.GUARD_HELD, guard_state=claim_state(guard))
        found = [self._live(key, now) for key in admission.claims]
        if admission.exclusive and PENDING in found:
            return Admitted(Verdict.IN_FLIGHT)
        counts = [self._window(w, wall) for w in admission.windows]
        for index, (window, (current, previous, elapsed)) in enumerate(
            zip(admission.windows, counts, strict=True)
        ):
            count = sliding_count(current, previous, elapsed, window.window_s)
            if count + admission.cost > window.limit:
                room = window.limit - admission.cost
                wait = seconds_until_room(current, previous, elapsed, window.window_s, room)
                return Admitted(Verdict.LIMITED, limited=index, retry_after_s=wait)
        for window, (current, previous, _) in zip(admission.windows, counts, strict=True):
            index = int(wall // window.window_s)
            self._windows[window.key] = (index, current + admission.cost, previous)
        self._store(admission.guard, PENDING, ttl, now)
        states = []
        for key, value in zip(admission.claims, found, strict=True):
            if value is None:
                self._store(key, PENDING, ttl, now)
                states.append(ClaimState.CLAIMED)
            else:
                states.append(claim_state(value))
        return Admitted(Verdict.ADMITTED, claims=tuple(states))

    def _window(self, window: RateWindow, wall: float) -> tuple[int, int, float]:
        """Returns (current count, previous count, seconds into the current window)."""
        index, elapsed = divmod(wall, window.window_s)
        stored, current, previous = self._windows.get(window.key, (-2, 0, 0))
        if stored != index:
            previous = current if stored == index - 1 else 0
            current = 0
        return current, previous, elapsed

    async def publish(self, channel: str, message: bytes) -> None:
        """Queues the message for every current subscriber of the channel."""
        for queue in self._subscribers.get(channel, ()):
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(bytes(message))

    def subscribe(self, channel: str) -> AsyncGenerator[bytes, None]:
        """Yields messages published on the channel from the first `__anext__` on."""
        return self._subscribe(channel)

    async def _subscribe(self, channel: str) -> AsyncGenerator[bytes, None]:
        queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=_SUBSCRIBER_QUEUE_MAX)
        subscribers = self._subscribers.setdefault(channel, set())
        subscribers.add(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            subscribers.discard(queue)
            if not subscribers and self._subscribers.get(channel) is subscribers:
                del self._subscribers[channel]
