"""The online store on Redis: one hash per (project, user), compare-and-set in Lua.

Key `dps:f:{project_id}:{user_id}` (each id percent-encoded, so a `:` inside an id can
never make two (project, user) pairs share a key), fields `rec` (the tiles,
`codec.encode_record(...).features`), `ids` (the remembered event ids, the other blob;
serving never fetches it) and `gen` (the generation, 1 on create). A hash written
before the ids were split off has no `ids` field and JSON in `rec`, which still reads.
A write is one Lua script: check the generation, set the three fields, set the TTL;
Redis runs scripts atomically, so two writers can never both succeed from the same
generation, and the ids always change with the tiles they counted. `put_many` sends
one script call per record in one pipeline (one round trip; each call still atomic on
its own). Expired keys are gone (Redis expires them),
so they read as absent and can be created again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import quote

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff

from app.core.settings import BackendSettings
from app.db.online_store import OnlineStore, RecordWrite, StoredRecord, WriteConflict
from app.tiles.codec import decode_record, encode_record

_T = TypeVar("_T")
_KEY_PREFIX = "dps:f"
_CONNECT_TIMEOUT_S = 1.0
_SOCKET_TIMEOUT_S = 5.0  # large records (hundreds of KB) take a moment to move
_MAX_CONNECTIONS = 64
_POOL_WAIT_S = 5.0

# KEYS[1] record key; ARGV[1] expected generation ("" = must not exist);
# ARGV[2] the tiles blob; ARGV[3] the ids blob; ARGV[4] TTL in milliseconds. Returns the
# new generation, or -1 when the expectation does not hold.
_COMPARE_AND_SET = """
local current = redis.call('HGET', KEYS[1], 'gen')
if ARGV[1] == '' then
  if current then return -1 end
  current = '0'
elseif current ~= ARGV[1] then
  return -1
end
local generation = tonumber(current) + 1
redis.call('HSET', KEYS[1], 'rec', ARGV[2], 'ids', ARGV[3], 'gen', generation)
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return generation
"""

# KEYS: record keys; ARGV[1] "ids" to return each key's `ids` too. Returns, flat, each
# key's `rec`, `gen` (and `ids`), nil when absent, in order. A batch read is this one
# command: a pipeline of one HMGET per key cost ~5 ms of client CPU for 100 keys in
# redis-py (packing and parsing a reply per command), one multi-key reply ~0.8 ms.
# Read-only, so it never blocks writers for long (a 1,000-key
# batch runs in about a millisecond).
_READ_MANY = """
local out = {}
local n = 0
for _, key in ipairs(KEYS) do
  local fields
  if ARGV[1] then
    fields = redis.call('HMGET', key, 'rec', 'gen', 'ids')
  else
    fields = redis.call('HMGET', key, 'rec', 'gen')
  end
  for _, value in ipairs(fields) do
    n = n + 1
    out[n] = value
  end
end
return out
"""


def record_key(project_id: str, user_id: str) -> str:
    """The Redis key of a user's record."""
    return f"{_KEY_PREFIX}:{quote(project_id, safe='')}:{quote(user_id, safe='')}"


def _decode(fields: Sequence[bytes | str | None]) -> StoredRecord | None:
    """(rec, gen) or (rec, gen, ids) of a hash -> its StoredRecord; None when absent."""
    tiles, generation, *ids = fields
    if tiles is None or generation is None:
        return None
    blob = ids[0] if ids else None
    assert not isinstance(blob, str), "the client returns bytes (decode_responses is off)"
    return StoredRecord(decode_record(tiles, blob), int(generation))


class RedisOnlineStore(OnlineStore):
    """Feature records in Redis hashes with TTLs."""

    def __init__(self, settings: BackendSettings) -> None:
        self._url = settings.redis_url
        self._client: aioredis.Redis | None = None
        self._cas: Any = None
        self._read_many: Any = None

    async def initialize(self) -> None:
        """Builds the pool and registers the script; connects lazily."""
        if self._client is not None:
            return
        pool = aioredis.BlockingConnectionPool.from_url(
            self._url,
            max_connections=_MAX_CONNECTIONS,
            timeout=_POOL_WAIT_S,
            socket_connect_timeout=_CONNECT_TIMEOUT_S,
            socket_timeout=_SOCKET_TIMEOUT_S,
            socket_keepalive=True,
            retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.2), retries=1),
        )
        self._client = aioredis.Redis(connection_pool=pool)
        # Script objects run EVALSHA and reload the script after a Redis restart.
        self._cas = self._client.register_script(_COMPARE_AND_SET)
        self._read_many = self._client.register_script(_READ_MANY)

    async def close(self) -> None:
        """Closes the pool; idempotent."""
        if self._client is not None:
            await self._client.aclose(close_connection_pool=True)
        self._client = None

    def _redis(self) -> aioredis.Redis:
        if self._client is None:
            raise RuntimeError("RedisOnlineStore used before initialize()")
        return self._client

    async def ping(self) -> None:
        """Returns when Redis answers PING; raises redis.exceptions.RedisError."""
        await self._redis().ping()

    async def get(
        self, project_id: str, user_id: str, *, with_ids: bool = True
    ) -> StoredRecord | None:
        """Returns the record (without its event ids unless `with_ids`), or None if
        absent or expired."""
        fields = ["rec", "gen", "ids"] if with_ids else ["rec", "gen"]
        return _decode(await self._redis().hmget(record_key(project_id, user_id), fields))

    async def get_many(self, project_id: str, user_ids: Sequence[str]) -> list[StoredRecord | None]:
        """Returns the records with their event ids in the order of `user_ids`, from one
        command."""
        flat = await self._fields_of(project_id, user_ids, with_ids=True)
        return [_decode(flat[i : i + 3]) for i in range(0, len(flat), 3)]

    async def get_many_mapped(
        self,
        project_id: str,
        user_ids: Sequence[str],
        convert: Callable[[dict[str, Any]], _T],
    ) -> list[_T | None]:
        """Returns `convert(record)` per user id in order (None if absent), from one
        command; each record is decoded, converted and dropped before the next."""
        flat = await self._fields_of(project_id, user_ids, with_ids=False)
        it = iter(flat)
        return [
            None if tiles is None or generation is None else convert(decode_record(tiles))
            for tiles, generation in zip(it, it, strict=True)
        ]

    async def _fields_of(
        self, project_id: str, user_ids: Sequence[str], *, with_ids: bool
    ) -> list[bytes | None]:
        """Returns `rec`, `gen` (and `ids`) of each user's hash, flat, in order."""
        if not user_ids:
            return []
        self._redis()
        prefix = f"{_KEY_PREFIX}:{quote(project_id, safe='')}:"
        keys = [prefix + quote(user_id, safe="") for user_id in user_ids]
        flat: list[bytes | None] = await self._read_many(
            keys=keys, args=["ids"] if with_ids else []
        )
        return flat

    async def put(
        self,
        project_id: str,
        user_id: str,
        record: dict[str, Any],
        ttl_seconds: int,
        expected_generation: int | None,
    ) -> None:
        """Compare-and-set with the TTL; raises WriteConflict, ValueError for ttl ≤ 0."""
        if ttl_seconds <= 0:
            raise ValueError("ttl_seconds must be positive")
        self._redis()
        generation = await self._cas(
            keys=[record_key(project_id, user_id)],
            args=_cas_args(record, ttl_seconds, expected_generation),
        )
        if int(generation) < 0:
            raise _conflict(project_id, user_id, expected_generation)

    async def put_many(
        self, project_id: str, writes: Sequence[RecordWrite], ttl_seconds: int
    ) -> list[WriteConflict | None]:
        """Compare-and-set of each record, in one pipeline (one round trip).

        Returns None or the WriteConflict per write, in order; raises ValueError for
        ttl ≤ 0 and the first redis error of the pipeline (the other writes may have
        been applied)."""
        if ttl_seconds <= 0:
            raise ValueError("ttl_seconds must be positive")
        if not writes:
            return []
        # Not a transaction: each script call is atomic by itself, and one user's
        # conflict must not undo the others' writes. The pipeline checks the script is
        # loaded (SCRIPT EXISTS) before it sends the calls.
        pipe = self._redis().pipeline(transaction=False)
        for write in writes:
            await self._cas(
                keys=[record_key(project_id, write.user_id)],
                args=_cas_args(write.record, ttl_seconds, write.expected_generation),
                client=pipe,
            )
        replies = await pipe.execute(raise_on_error=False)
        results: list[WriteConflict | None] = []
        for write, reply in zip(writes, replies, strict=True):
            if isinstance(reply, Exception):
                raise reply
            conflicted = int(reply) < 0
            results.append(
                _conflict(project_id, write.user_id, write.expected_generation)
                if conflicted
                else None
            )
        return results


def _cas_args(
    record: dict[str, Any], ttl_seconds: int, expected_generation: int | None
) -> list[bytes | str | int]:
    expected = "" if expected_generation is None else str(expected_generation)
    tiles, ids = encode_record(record)
    return [expected, tiles, ids, ttl_seconds * 1000]


def _conflict(project_id: str, user_id: str, expected_generation: int | None) -> WriteConflict:
    return WriteConflict(f"{project_id}/{user_id}: generation {expected_generation!r} is stale")
