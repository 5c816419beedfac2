"""The shared cache on Redis (redis.asyncio with hiredis).

Failure policy: every call either answers or raises CacheUnavailable within about a
second (1 s connect timeout, 1 s read timeout; one immediate retry on a fresh
connection after a connection error, so a pooled connection left stale by a Redis
restart heals transparently, but no retry after a timeout: a frozen Redis was 4 s per
call with it, and the 503 it causes must come within about a second). Nothing waits on
a dead Redis: callers (the config loader, dedup, rate limits) decide what to do.

Subscriptions do NOT reconnect by themselves: when the pub/sub connection breaks
(Redis restarted, killed, or stopped answering pings), the generator raises
CacheUnavailable. Messages published while the connection was down are lost, so
the caller must resubscribe AND re-read whatever state the notices were about.
A silent reconnect would hide exactly that gap.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from typing import cast

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.core.settings import BackendSettings
from app.db.cache import DONE, PENDING, Cache, CacheUnavailable, ClaimState

_CONNECT_TIMEOUT_S = 1.0
# Every command here takes well under a millisecond on a healthy Redis (a 2,500-key claim
# script a few ms).
_SOCKET_TIMEOUT_S = 1.0
_MAX_CONNECTIONS = 64
# How long a caller waits for a free pooled connection before giving up.
_POOL_WAIT_S = 2.0
# An idle subscription pings Redis this often, and gives up when the answer has not
# come after the deadline: a half-open TCP connection never errors on its own.
_SUBSCRIBE_POLL_S = 1.0
_SUBSCRIBE_PING_EVERY_S = 5.0
_SUBSCRIBE_PONG_DEADLINE_S = 3.0

_OUTAGE_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError, asyncio.TimeoutError)

# Claims (see app/db/cache.py). Lua, so that a batch is one round trip (and one command
# for redis-py to encode, not 2,500), and the guard key is checked and the rest claimed in
# one atomic step: a refused guard leaves no trace. All
# keys of a script must live on one node: fine on a single Redis (or a primary with
# replicas); Redis Cluster would need hash-tagged keys. A plain SET NX (not SET NX GET,
# Redis 7+) keeps it working on older servers.
_CLAIM = f"""
local states = {{}}
for i, key in ipairs(KEYS) do
  if redis.call('SET', key, '{PENDING.decode()}', 'NX', 'EX', ARGV[1]) then
    states[i] = 0
  else
    states[i] = redis.call('GET', key) == '{PENDING.decode()}' and 1 or 2
    if i == 1 and ARGV[2] == '1' then
      for j = 2, #KEYS do states[j] = 3 end
      return states
    end
  end
end
return states
"""
_CLAIM_STATES = (ClaimState.CLAIMED, ClaimState.PENDING, ClaimState.DONE, ClaimState.SKIPPED)
_RELEASE = f"""
for _, key in ipairs(KEYS) do
  if redis.call('GET', key) == '{PENDING.decode()}' then redis.call('DEL', key) end
end
return 0
"""
_CONFIRM = f"""
for i, key in ipairs(KEYS) do redis.call('SET', key, '{DONE.decode()}', 'EX', ARGV[i]) end
return 0
"""
_SCRIPTS = {"claim": _CLAIM, "confirm": _CONFIRM, "release": _RELEASE}


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
        self._scripts: dict[str, AsyncScript] = {}

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
        quick_retry = Retry(
            ExponentialWithJitterBackoff(base=0.05, cap=0.2),
            retries=1,
            supported_errors=(RedisConnectionError,),
        )
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
        self._scripts.clear()

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

    async def claim_many(
        self, keys: Sequence[str], pending_ttl_seconds: int, *, guarded: bool = False
    ) -> list[ClaimState]:
        """One Lua script for all keys (one round trip, atomic); see Cache.claim_many.
        Raises CacheUnavailable, ValueError for ttl ≤ 0."""
        if pending_ttl_seconds <= 0:
            raise ValueError("pending_ttl_seconds must be positive")
        if not keys:
            return []
        # If the reply is lost and the client's one retry runs the script again, the keys
        # claimed by the first run come back PENDING: the caller refuses its own event
        # as "in flight" until the claims expire. Safe (nothing is acknowledged), and rare.
        with _unavailable_on_outage("claim script"):
            codes = await self._script("claim")(
                keys=list(keys), args=[pending_ttl_seconds, 1 if guarded else 0]
            )
        return [_CLAIM_STATES[int(code)] for code in codes]

    async def confirm_many(self, ttls: Mapping[str, int]) -> None:
        """SET key done EX ttl for every key, in one Lua script (a 500-key pipeline costs
        redis-py 2-3x the client CPU of one script call). Raises CacheUnavailable,
        ValueError for ttl ≤ 0."""
        if any(ttl <= 0 for ttl in ttls.values()):
            raise ValueError("ttl_seconds must be positive")
        if not ttls:
            return
        with _unavailable_on_outage("confirm script"):
            await self._script("confirm")(keys=list(ttls), args=list(ttls.values()))

    async def release_many(self, keys: Sequence[str]) -> None:
        """Deletes the keys still pending, in one Lua script. Raises CacheUnavailable."""
        if not keys:
            return
        with _unavailable_on_outage("release script"):
            await self._script("release")(keys=list(keys))

    def _script(self, name: str) -> AsyncScript:
        script = self._scripts.get(name)
        if script is None:
            # redis-py sends EVALSHA and falls back to loading the script when Redis
            # does not know it (first use, or after a Redis restart emptied its cache).
            script = self._scripts[name] = self._redis().register_script(_SCRIPTS[name])
        return script

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
