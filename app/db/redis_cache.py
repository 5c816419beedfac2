"""The shared cache on Redis (redis.asyncio with hiredis).

Failure policy: every call either answers or raises CacheUnavailable within a few
seconds (1 s connect timeout, 2 s read timeout, one quick retry so a pooled
connection left stale by a Redis restart heals transparently). Nothing waits on a
dead Redis: callers (the config loader, dedup, rate limits) decide what to do.

Subscriptions do NOT reconnect by themselves: when the pub/sub connection breaks
(Redis restarted, killed, or stopped answering pings), the generator raises
CacheUnavailable. Messages published while the connection was down are lost, so
the caller must resubscribe AND re-read whatever state the notices were about.
A silent reconnect would hide exactly that gap.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import cast

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.core.settings import BackendSettings
from app.db.cache import Cache, CacheUnavailable

_CONNECT_TIMEOUT_S = 1.0
_SOCKET_TIMEOUT_S = 2.0
_MAX_CONNECTIONS = 64
# How long a caller waits for a free pooled connection before giving up.
_POOL_WAIT_S = 2.0
# An idle subscription pings Redis this often, and gives up when the answer has not
# come after the deadline: a half-open TCP connection never errors on its own.
_SUBSCRIBE_POLL_S = 1.0
_SUBSCRIBE_PING_EVERY_S = 5.0
_SUBSCRIBE_PONG_DEADLINE_S = 3.0

_OUTAGE_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError, asyncio.TimeoutError)


@contextmanager
def _unavailable_on_outage(what: str) -> Iterator[None]:
    try:
        yield
    except _OUTAGE_ERRORS as exc:
        raise CacheUnavailable(f"redis {what} failed: {exc!r}") from exc


class RedisCache(Cache):
    """Cache, notice board and rate-limit storage on one Redis database."""

    def __init__(self, settings: BackendSettings) -> None:
        self._url = settings.redis_url
        self._client: aioredis.Redis | None = None
        self._pubsub_client: aioredis.Redis | None = None

    def _pool(self, retry: Retry) -> aioredis.BlockingConnectionPool:
        pool: aioredis.BlockingConnectionPool = aioredis.BlockingConnectionPool.from_url(
            self._url,
            max_connections=_MAX_CONNECTIONS,
            timeout=_POOL_WAIT_S,
            socket_connect_timeout=_CONNECT_TIMEOUT_S,
            socket_timeout=_SOCKET_TIMEOUT_S,
            socket_keepalive=True,
            retry=retry,
        )
        return pool

    async def initialize(self) -> None:
        """Builds the connection pools; connects lazily, so a Redis that is down at start
        does not stop the process (calls raise CacheUnavailable until it is back)."""
        if self._client is not None:
            return
        quick_retry = Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.2), retries=1)
        self._client = aioredis.Redis(connection_pool=self._pool(quick_retry))
        # Pub/sub connections never retry: redis-py would reconnect and resubscribe
        # behind our back, hiding the messages lost meanwhile (see module docstring).
        self._pubsub_client = aioredis.Redis(connection_pool=self._pool(Retry(NoBackoff(), 0)))

    async def close(self) -> None:
        """Closes both pools; idempotent."""
        for client in (self._client, self._pubsub_client):
            if client is not None:
                with suppress(*_OUTAGE_ERRORS):
                    await client.aclose(close_connection_pool=True)
        self._client = self._pubsub_client = None

    def _redis(self) -> aioredis.Redis:
        if self._client is None:
            raise RuntimeError("RedisCache used before initialize()")
        return self._client

    async def ping(self) -> None:
        """Returns when Redis answers PING; raises CacheUnavailable otherwise."""
        with _unavailable_on_outage("PING"):
            await self._redis().ping()

    async def get(self, key: str) -> bytes | None:
        """Returns the value or None; raises CacheUnavailable."""
        with _unavailable_on_outage("GET"):
            value = await self._redis().get(key)
        # decode_responses is off: redis-py's `bytes | str` union is always bytes here.
        return cast(bytes | None, value)

    async def set(self, key: str, value: bytes, ttl_seconds: int | None = None) -> None:
        """Stores the value (replacing any TTL); raises CacheUnavailable, ValueError for ttl ≤ 0."""
        if ttl_seconds is not None and ttl_seconds <= 0:
            raise ValueError("ttl_seconds must be positive (or None for no expiry)")
        with _unavailable_on_outage("SET"):
            await self._redis().set(key, value, ex=ttl_seconds)

    async def delete(self, key: str) -> None:
        """Removes the key if present; raises CacheUnavailable."""
        with _unavailable_on_outage("DEL"):
            await self._redis().delete(key)

    async def add_if_absent(self, key: str, ttl_seconds: int) -> bool:
        """SET NX EX: True if this call claimed the key; raises CacheUnavailable."""
        if ttl_seconds <= 0:
            raise ValueError("ttl_seconds must be positive")
        with _unavailable_on_outage("SET NX"):
            claimed = await self._redis().set(key, b"1", ex=ttl_seconds, nx=True)
        return bool(claimed)

    async def add_many_if_absent(self, keys: Sequence[str], ttl_seconds: int) -> list[bool]:
        """SET NX EX for every key in one pipeline (no MULTI); returns per key whether this
        call claimed it. Raises CacheUnavailable (some keys may then be claimed)."""
        if ttl_seconds <= 0:
            raise ValueError("ttl_seconds must be positive")
        if not keys:
            return []
        with _unavailable_on_outage("pipelined SET NX"):
            pipe = self._redis().pipeline(transaction=False)
            for key in keys:
                pipe.set(key, b"1", ex=ttl_seconds, nx=True)
            results = await pipe.execute()
        return [bool(r) for r in results]

    async def publish(self, channel: str, message: bytes) -> None:
        """PUBLISH; raises CacheUnavailable. Only current subscribers get the message."""
        with _unavailable_on_outage("PUBLISH"):
            await self._redis().publish(channel, message)

    def subscribe(self, channel: str) -> AsyncGenerator[bytes, None]:
        """Yields the messages published on `channel` from the moment the subscription is
        active (the first `__anext__`). Raises CacheUnavailable when the connection
        breaks; it does not reconnect (see the module docstring)."""
        return self._subscribe(channel)

    async def _subscribe(self, channel: str) -> AsyncGenerator[bytes, None]:
        if self._pubsub_client is None:
            raise RuntimeError("RedisCache used before initialize()")
        pubsub = self._pubsub_client.pubsub(ignore_subscribe_messages=True)
        loop = asyncio.get_running_loop()
        try:
            with _unavailable_on_outage("SUBSCRIBE"):
                await pubsub.subscribe(channel)
            last_heard = loop.time()
            ping_sent_at: float | None = None
            while True:
                with _unavailable_on_outage("pub/sub read"):
                    message = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=_SUBSCRIBE_POLL_S
                    )
                now = loop.time()
                if message is None:
                    if ping_sent_at is not None:
                        if now - ping_sent_at > _SUBSCRIBE_PONG_DEADLINE_S:
                            raise CacheUnavailable("redis pub/sub connection stopped answering")
                    elif now - last_heard > _SUBSCRIBE_PING_EVERY_S:
                        with _unavailable_on_outage("pub/sub PING"):
                            await pubsub.ping()
                        ping_sent_at = now
                    continue
                last_heard, ping_sent_at = now, None
                if message["type"] == "message":
                    data: bytes = message["data"]
                    yield data
        finally:
            # The connection may already be dead; closing must not mask the real error.
            with suppress(*_OUTAGE_ERRORS):
                await pubsub.aclose()

    def rate_limit_storage_uri(self) -> str:
        """Returns `async+<redis url>` (e.g. `async+redis://host:port/0`), the `limits` 5.x
        async Redis storage on this same Redis. `limits` defaults to the `coredis`
        driver, which is not installed: build it with
        `storage_from_string(uri, implementation="redispy")`."""
        return f"async+{self._url}"
