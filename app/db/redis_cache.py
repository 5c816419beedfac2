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
from app.db.cache import (
    DONE,
    PENDING,
    Admission,
    Admitted,
    Cache,
    CacheUnavailable,
    ClaimState,
    Verdict,
)

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
# for redis-py to encode, not 2,500), atomic as a whole. All
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
  end
end
return states
"""
_CLAIM_STATES = (ClaimState.CLAIMED, ClaimState.PENDING, ClaimState.DONE)
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
# Admissions (see Cache.admit_many and the sliding count in app/db/cache.py), any number
# in one call, after the confirms. KEYS: the keys to confirm, then per admission: guard,
# claims, windows. ARGV: pending TTL, admission count, confirm count, the confirms' TTLs,
# then per admission: claim count, window count, cost, exclusive (0/1), and
# (limit, seconds) per window. Per admission it returns {verdict, guard state, limited
# window (0-based, -1: none), retry-after, claim states...}, codes as in _VERDICTS and
# _CLAIM_STATES. The clock is Redis' TIME, the same for every ingestion replica (scripts
# replicate their effects, so reading the clock is allowed).
_ADMIT = f"""
local ttl = ARGV[1]
local nconfirm = tonumber(ARGV[3])
for i = 1, nconfirm do redis.call('SET', KEYS[i], '{DONE.decode()}', 'EX', ARGV[3 + i]) end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local out = {{}}
local k, a = nconfirm + 1, nconfirm + 4
for n = 1, tonumber(ARGV[2]) do
  local nclaims, nwindows = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  local cost, exclusive = tonumber(ARGV[a + 2]), ARGV[a + 3] == '1'
  a = a + 4
  local guard, claims_at, windows_at = KEYS[k], k + 1, k + 1 + nclaims
  k = windows_at + nwindows
  local verdict = nil
  local held = redis.call('GET', guard)
  if held then verdict = {{1, held == '{PENDING.decode()}' and 1 or 2, -1, 0}} end
  local found = {{}}
  if not verdict then
    for i = 1, nclaims do
      found[i] = redis.call('GET', KEYS[claims_at + i - 1])
      if exclusive and found[i] == '{PENDING.decode()}' then verdict = {{2, 0, -1, 0}} end
    end
  end
  local windows = {{}}
  if not verdict then
    for i = 1, nwindows do
      local key = KEYS[windows_at + i - 1]
      local limit, size = tonumber(ARGV[a + 2 * i - 2]), tonumber(ARGV[a + 2 * i - 1])
      local index = math.floor(now / size)
      local elapsed = now - index * size
      local h = redis.call('HMGET', key, 'w', 'c', 'p')
      local w, c, p = tonumber(h[1]), tonumber(h[2]) or 0, tonumber(h[3]) or 0
      if w ~= index then
        if w == index - 1 then p = c else p = 0 end
        c = 0
      end
      windows[i] = {{key, index, c + cost, p, 2 * size}}
      if p * (size - elapsed) / size + c + cost > limit then
        local room, wait = limit - cost, 0
        if c <= room then wait = size - (room - c) * size / p - elapsed
        else wait = (size - elapsed) + size * (1 - room / c) end
        verdict = {{3, 0, i - 1, math.max(1, math.ceil(wait))}}
        break
      end
    end
  end
  a = a + 2 * nwindows
  if not verdict then
    redis.call('SET', guard, '{PENDING.decode()}', 'EX', ttl)
    for _, w in ipairs(windows) do
      redis.call('HSET', w[1], 'w', w[2], 'c', w[3], 'p', w[4])
      redis.call('EXPIRE', w[1], w[5])
    end
    verdict = {{0, 0, -1, 0}}
    for i = 1, nclaims do
      if found[i] then
        verdict[4 + i] = found[i] == '{PENDING.decode()}' and 1 or 2
      else
        redis.call('SET', KEYS[claims_at + i - 1], '{PENDING.decode()}', 'EX', ttl)
        verdict[4 + i] = 0
      end
    end
  end
  out[n] = verdict
end
return out
"""
_VERDICTS = (Verdict.ADMITTED, Verdict.GUARD_HELD, Verdict.IN_FLIGHT, Verdict.LIMITED)
_SCRIPTS = {"claim": _CLAIM, "confirm": _CONFIRM, "release": _RELEASE, "admit": _ADMIT}


@contextmanager
def _unavailable_on_outage(what: str) -> Iterator[None]:
    try:
        yield
    except _OUTAGE_ERRORS as exc:
        raise CacheUnavailable(f"redis {what} failed: {exc!r}") from exc
    except RuntimeError as exc:
        # redis-py on uvloop: reconnecting a pooled connection whose transport Redis
        # closed (killed mid-stream) raises uvloop's RuntimeError "... the handler is
        # closed" instead of a ConnectionError. Found by the Redis fault test as a 500.
        if "handler is closed" not in str(exc):
            raise
        raise CacheUnavailable(f"redis {what} failed: {exc!r}") from exc


def _admitted(reply: list[int]) -> Admitted:
    verdict, guard, limited, retry_after, *claims = (int(code) for code in reply)
    return Admitted(
        _VERDICTS[verdict],
        guard_state=_CLAIM_STATES[guard],
        claims=tuple(_CLAIM_STATES[code] for code in claims),
        limited=None if limited < 0 else limited,
        retry_after_s=retry_after,
    )


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

    async def claim_many(self, keys: Sequence[str], pending_ttl_seconds: int) -> list[ClaimState]:
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
            codes = await self._script("claim")(keys=list(keys), args=[pending_ttl_seconds])
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

    async def admit_many(
        self,
        admissions: Sequence[Admission],
        pending_ttl_seconds: int,
        confirm: Mapping[str, int] | None = None,
    ) -> list[Admitted]:
        """One Lua script for all admissions and the confirms before them (one round
        trip); see Cache.admit_many. Raises CacheUnavailable, ValueError for ttl ≤ 0."""
        if pending_ttl_seconds <= 0:
            raise ValueError("pending_ttl_seconds must be positive")
        confirm = confirm or {}
        if any(ttl <= 0 for ttl in confirm.values()):
            raise ValueError("ttl_seconds must be positive")
        if not admissions:
            await self.confirm_many(confirm)
            return []
        keys: list[str] = list(confirm)
        args: list[int | str] = [pending_ttl_seconds, len(admissions), len(confirm)]
        args += confirm.values()
        for admission in admissions:
            keys.append(admission.guard)
            keys.extend(admission.claims)
            keys.extend(w.key for w in admission.windows)
            args += (len(admission.claims), len(admission.windows), admission.cost)
            args.append(1 if admission.exclusive else 0)
            for window in admission.windows:
                args += (window.limit, window.window_s)
        # A reply lost and the script run again by the client's one retry finds its own
        # guard pending: the request is refused as in flight (nothing acknowledged,
        # nothing charged twice), as for claim_many.
        with _unavailable_on_outage("admit script"):
            replies = await self._script("admit")(keys=keys, args=args)
        return [_admitted(reply) for reply in replies]

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
