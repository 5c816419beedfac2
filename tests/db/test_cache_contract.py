"""Cache contract: the same behaviour from RedisCache (real Redis) and MemoryCache,
two-phase claims (claim_many / confirm_many / release_many) and admissions (claims with
a rate-limit charge, admit_many) included.

The Redis outage tests start a redis-server of their own on a free port and kill it by
pid; the shared test server is never touched.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import cast

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from app.core.settings import BackendSettings
from app.db.cache import (
    Admission,
    Admitted,
    Cache,
    CacheUnavailable,
    ClaimState,
    RateWindow,
    Verdict,
    seconds_until_room,
    sliding_count,
)
from app.db.memory_cache import MemoryCache
from app.db.redis_cache import RedisCache
from tests.conftest import unique
from tests.support.own_redis import OwnRedis, free_port
from tests.support.tcp_relay import TcpRelay

CLAIMED, PENDING, DONE = ClaimState.CLAIMED, ClaimState.PENDING, ClaimState.DONE
PROBE = b"__probe__"
# Upper bound for anything that must "fail fast": a hang fails the test instead of
# blocking the suite. Not a timing assertion.
FAIL_FAST_BOUND_S = 15.0
# A frozen Redis costs one read timeout (1 s); this bound tells it from the retried
# timeout it replaced (4 s).
FROZEN_BOUND_S = 3.0


@pytest.fixture(
    params=[
        pytest.param("redis", id="redis", marks=pytest.mark.redis),
        pytest.param("memory", id="memory"),
    ]
)
async def cache(
    request: pytest.FixtureRequest, backend_settings: BackendSettings
) -> AsyncIterator[Cache]:
    impl: Cache = RedisCache(backend_settings) if request.param == "redis" else MemoryCache()
    await impl.initialize()
    try:
        yield impl
    finally:
        await impl.close()


async def active_subscription(cache: Cache, channel: str) -> AsyncGenerator[bytes, None]:
    """A subscription known to be live: a subscription starts on the first `__anext__`,
    so probes are published until one comes back."""
    sub = cast(AsyncGenerator[bytes, None], cache.subscribe(channel))
    first = asyncio.ensure_future(anext(sub))
    for _ in range(100):
        await cache.publish(channel, PROBE)
        done, _ = await asyncio.wait({first}, timeout=0.05)
        if done:
            break
    assert first.result() == PROBE
    return sub


async def next_messages(sub: AsyncGenerator[bytes, None], count: int) -> list[bytes]:
    """The next `count` messages, probes left out."""
    got: list[bytes] = []
    async with asyncio.timeout(FAIL_FAST_BOUND_S):
        while len(got) < count:
            message = await anext(sub)
            if message != PROBE:
                got.append(message)
    return got


async def wait_until_absent(cache: Cache, key: str) -> None:
    for _ in range(int(FAIL_FAST_BOUND_S / 0.1)):
        if await cache.get(key) is None:
            return
        await asyncio.sleep(0.1)
    pytest.fail(f"{key} never expired")


class TestKeyValue:
    async def test_get_of_a_missing_key_returns_none(self, cache: Cache) -> None:
        assert await cache.get(unique("missing")) is None

    async def test_set_then_get_returns_the_exact_bytes(self, cache: Cache) -> None:
        key, value = unique("k"), bytes(range(256)) * 3
        await cache.set(key, value)
        assert await cache.get(key) == value

    async def test_set_overwrites_the_previous_value(self, cache: Cache) -> None:
        key = unique("k")
        await cache.set(key, b"one")
        await cache.set(key, b"two")
        assert await cache.get(key) == b"two"

    async def test_delete_removes_the_key_and_ignores_missing_keys(self, cache: Cache) -> None:
        key = unique("k")
        await cache.set(key, b"v")
        await cache.delete(key)
        await cache.delete(key)
        assert await cache.get(key) is None

    async def test_a_value_set_with_a_ttl_expires(self, cache: Cache) -> None:
        key = unique("k")
        await cache.set(key, b"v", ttl_seconds=1)
        assert await cache.get(key) == b"v"
        await wait_until_absent(cache, key)

    async def test_set_without_ttl_clears_an_earlier_ttl(self, cache: Cache) -> None:
        key = unique("k")
        await cache.set(key, b"short", ttl_seconds=1)
        await cache.set(key, b"kept")
        await asyncio.sleep(1.5)
        assert await cache.get(key) == b"kept"

    async def test_non_positive_ttl_is_refused(self, cache: Cache) -> None:
        with pytest.raises(ValueError, match="ttl"):
            await cache.set(unique("k"), b"v", ttl_seconds=0)
        with pytest.raises(ValueError, match="ttl"):
            await cache.claim_many([unique("k")], -1)
        with pytest.raises(ValueError, match="ttl"):
            await cache.confirm_many({unique("k"): 0})

    async def test_ping_answers(self, cache: Cache) -> None:
        await cache.ping()


class TestClaims:
    async def test_absent_keys_are_claimed_and_taken_ones_report_their_state(
        self, cache: Cache
    ) -> None:
        free, pending, done = (unique("claim") for _ in range(3))
        assert await cache.claim_many([pending, done], 60) == [CLAIMED, CLAIMED]
        await cache.confirm_many({done: 60})
        assert await cache.claim_many([free, pending, done], 60) == [CLAIMED, PENDING, DONE]
        assert await cache.claim_many([free], 60) == [PENDING]

    async def test_concurrent_claims_of_one_key_have_exactly_one_winner(self, cache: Cache) -> None:
        key = unique("claim")
        results = await asyncio.gather(*(cache.claim_many([key], 60) for _ in range(20)))
        states = [state for [state] in results]
        assert states.count(CLAIMED) == 1
        assert states.count(PENDING) == 19

    async def test_a_batch_of_2500_keys_is_claimed_in_order(self, cache: Cache) -> None:
        keys = [unique("claim") for _ in range(2500)]
        await cache.claim_many(keys[::2], 60)
        states = await cache.claim_many(keys, 60)
        assert states == [PENDING if i % 2 == 0 else CLAIMED for i in range(2500)]

    async def test_no_keys_claims_confirms_and_releases_nothing(self, cache: Cache) -> None:
        assert await cache.claim_many([], 60) == []
        await cache.confirm_many({})
        await cache.release_many([])

    async def test_a_value_written_by_the_single_phase_claims_counts_as_done(
        self, cache: Cache
    ) -> None:
        key = unique("claim")
        await cache.set(key, b"1", ttl_seconds=60)
        assert await cache.claim_many([key], 60) == [DONE]

    async def test_a_pending_claim_expires_after_its_ttl(self, cache: Cache) -> None:
        key = unique("claim")
        assert await cache.claim_many([key], 1) == [CLAIMED]
        await wait_until_absent(cache, key)
        assert await cache.claim_many([key], 1) == [CLAIMED]


def window(limit: int, seconds: int = 60) -> RateWindow:
    return RateWindow(unique("rl"), limit, seconds)


async def admit(cache: Cache, *admissions: Admission) -> list[Admitted]:
    return await cache.admit_many(admissions, 60)


class TestAdmissions:
    async def test_an_admission_claims_its_guard_and_claims_and_charges_its_windows(
        self, cache: Cache
    ) -> None:
        guard, free, done = unique("guard"), unique("claim"), unique("claim")
        await cache.confirm_many({done: 60})
        limit = window(3)
        [admitted] = await admit(cache, Admission(guard, (free, done), (limit,), cost=2))
        assert admitted == Admitted(Verdict.ADMITTED, claims=(CLAIMED, DONE))
        assert await cache.claim_many([guard, free, done], 60) == [PENDING, PENDING, DONE]
        # 2 of 3 charged: one more fits, then the window is full.
        verdicts = [a.verdict for a in await admit(cache, *fresh_admissions(limit, 2))]
        assert verdicts == [Verdict.ADMITTED, Verdict.LIMITED]

    @pytest.mark.parametrize("guard_state", [PENDING, DONE])
    async def test_a_held_guard_refuses_with_nothing_claimed_or_charged(
        self, cache: Cache, guard_state: ClaimState
    ) -> None:
        guard, other, limit = unique("guard"), unique("claim"), window(1)
        await cache.claim_many([guard], 60)
        if guard_state is DONE:
            await cache.confirm_many({guard: 60})
        [refused] = await admit(cache, Admission(guard, (other,), (limit,), cost=1))
        assert refused == Admitted(Verdict.GUARD_HELD, guard_state=guard_state)
        assert await cache.get(other) is None
        [admitted] = await admit(cache, *fresh_admissions(limit, 1))
        assert admitted.verdict is Verdict.ADMITTED

    async def test_confirms_in_an_admission_call_are_done_before_its_admissions(
        self, cache: Cache
    ) -> None:
        guard, busy, other = unique("guard"), unique("claim"), unique("claim")
        await cache.claim_many([busy, other], 60)
        admission = Admission(guard, (busy,), (window(5),), 1, exclusive=True)
        [admitted] = await cache.admit_many([admission], 60, {busy: 60, other: 30})
        # Pending before the call, the exclusive admission would be refused as in flight.
        assert admitted == Admitted(Verdict.ADMITTED, claims=(DONE,))
        assert await cache.claim_many([busy, other], 60) == [DONE, DONE]

    async def test_confirms_without_admissions_are_done(self, cache: Cache) -> None:
        key = unique("claim")
        await cache.claim_many([key], 60)
        assert await cache.admit_many([], 60, {key: 60}) == []
        assert await cache.get(key) == b"done"

    async def test_an_exclusive_admission_with_a_pending_claim_takes_nothing(
        self, cache: Cache
    ) -> None:
        guard, busy, limit = unique("guard"), unique("claim"), window(1)
        await cache.claim_many([busy], 60)
        [refused] = await admit(cache, Admission(guard, (busy,), (limit,), 1, exclusive=True))
        assert refused.verdict is Verdict.IN_FLIGHT
        assert await cache.get(guard) is None
        [admitted] = await admit(cache, *fresh_admissions(limit, 1))
        assert admitted.verdict is Verdict.ADMITTED

    async def test_a_shared_admission_reports_pending_claims_and_takes_the_rest(
        self, cache: Cache
    ) -> None:
        guard, busy, free = unique("guard"), unique("claim"), unique("claim")
        await cache.claim_many([busy], 60)
        [admitted] = await admit(cache, Admission(guard, (busy, free)))
        assert admitted == Admitted(Verdict.ADMITTED, claims=(PENDING, CLAIMED))

    async def test_a_full_window_refuses_with_its_index_and_a_retry_after(
        self, cache: Cache
    ) -> None:
        roomy, tight = window(100), window(2, seconds=60)
        first = await admit(cache, *fresh_admissions(tight, 2, also=roomy))
        assert [a.verdict for a in first] == [Verdict.ADMITTED, Verdict.ADMITTED]
        guard, claim = unique("guard"), unique("claim")
        [refused] = await admit(cache, Admission(guard, (claim,), (roomy, tight), cost=1))
        assert refused.verdict is Verdict.LIMITED
        assert refused.limited == 1
        assert 1 <= refused.retry_after_s <= 120
        assert [await cache.get(guard), await cache.get(claim)] == [None, None]
        # The refused request was not charged to the roomy window either: 98 still fit.
        [fits] = await admit(cache, Admission(unique("guard"), windows=(roomy,), cost=98))
        assert fits.verdict is Verdict.ADMITTED

    async def test_admissions_of_one_call_are_decided_in_order(self, cache: Cache) -> None:
        limit = window(1)
        guard = unique("guard")
        verdicts = await admit(
            cache,
            Admission(guard, windows=(limit,), cost=1),
            Admission(guard, windows=(limit,), cost=1),
            Admission(unique("guard"), windows=(limit,), cost=1),
        )
        assert [v.verdict for v in verdicts] == [
            Verdict.ADMITTED,
            Verdict.GUARD_HELD,
            Verdict.LIMITED,
        ]

    async def test_concurrent_admissions_never_exceed_the_limit(self, cache: Cache) -> None:
        limit = window(5)
        results = await asyncio.gather(
            *(admit(cache, *fresh_admissions(limit, 1)) for _ in range(20))
        )
        verdicts = [a.verdict for [a] in results]
        assert verdicts.count(Verdict.ADMITTED) == 5
        assert verdicts.count(Verdict.LIMITED) == 15

    async def test_a_full_window_admits_again_once_it_slid_past(self, cache: Cache) -> None:
        limit = window(1, seconds=1)
        [first] = await admit(cache, *fresh_admissions(limit, 1))
        assert first.verdict is Verdict.ADMITTED
        refused: list[Admitted] = []
        async with asyncio.timeout(FAIL_FAST_BOUND_S):
            while True:
                [later] = await admit(cache, *fresh_admissions(limit, 1))
                if later.verdict is Verdict.ADMITTED:
                    break
                refused.append(later)
                await asyncio.sleep(0.1)
        # Refused while the first charge was in the window, and told to wait a second.
        assert refused
        assert {r.retry_after_s for r in refused} <= {1, 2}

    async def test_no_admissions_is_no_call(self, cache: Cache) -> None:
        assert await cache.admit_many([], 60) == []

    async def test_a_non_positive_ttl_is_refused(self, cache: Cache) -> None:
        with pytest.raises(ValueError, match="ttl"):
            await cache.admit_many([Admission(unique("guard"))], 0)


def fresh_admissions(
    limit: RateWindow, count: int, also: RateWindow | None = None
) -> list[Admission]:
    """`count` admissions of cost 1 with fresh guards, charged to `limit` (and `also`)."""
    windows = (limit,) if also is None else (also, limit)
    return [Admission(unique("guard"), windows=windows, cost=1) for _ in range(count)]


class TestSlidingWindow:
    """The sliding count and the Retry-After derived from it, against a brute-force
    walk of the clock (the same arithmetic runs in Lua on Redis)."""

    @staticmethod
    def count_after(current: int, previous: int, elapsed: float, size: int, wait: float) -> float:
        at = elapsed + wait
        if at < size:
            return previous * (size - at) / size + current
        if at < 2 * size:
            return current * (2 * size - at) / size
        return 0.0

    @given(
        size=st.integers(1, 3600),
        current=st.integers(0, 500),
        previous=st.integers(0, 500),
        fraction=st.floats(0, 0.999),
        room=st.integers(0, 499),
    )
    def test_retry_after_is_the_first_whole_second_with_room(
        self, size: int, current: int, previous: int, fraction: float, room: int
    ) -> None:
        elapsed = fraction * size
        assume(sliding_count(current, previous, elapsed, size) > room + 1e-6)
        wait = seconds_until_room(current, previous, elapsed, size, room)
        assert wait >= 1
        assert self.count_after(current, previous, elapsed, size, wait) <= room + 1e-6
        if wait > 1:
            assert self.count_after(current, previous, elapsed, size, wait - 1) > room - 1e-6


class TestConfirmAndRelease:
    async def test_confirmed_keys_are_done_with_their_own_ttl(self, cache: Cache) -> None:
        short, long = unique("claim"), unique("claim")
        await cache.claim_many([short, long], 60)
        await cache.confirm_many({short: 1, long: 60})
        assert await cache.claim_many([long], 60) == [DONE]
        await wait_until_absent(cache, short)
        assert await cache.claim_many([short], 60) == [CLAIMED]

    async def test_confirming_replaces_the_pending_ttl(self, cache: Cache) -> None:
        key = unique("claim")
        await cache.claim_many([key], 1)
        await cache.confirm_many({key: 60})
        await asyncio.sleep(1.5)
        assert await cache.claim_many([key], 60) == [DONE]

    async def test_a_key_whose_pending_claim_expired_is_still_confirmed(self, cache: Cache) -> None:
        key = unique("claim")
        await cache.confirm_many({key: 60})
        assert await cache.claim_many([key], 60) == [DONE]

    async def test_release_frees_pending_keys_and_keeps_done_ones(self, cache: Cache) -> None:
        pending, done, missing = unique("claim"), unique("claim"), unique("claim")
        await cache.claim_many([pending, done], 60)
        await cache.confirm_many({done: 60})
        await cache.release_many([pending, done, missing])
        assert await cache.claim_many([pending, done, missing], 60) == [CLAIMED, DONE, CLAIMED]


class TestPubSub:
    async def test_a_subscriber_receives_messages_in_publish_order(self, cache: Cache) -> None:
        channel = unique("ch")
        sub = await active_subscription(cache, channel)
        try:
            for message in (b"1", b"2", b"3"):
                await cache.publish(channel, message)
            assert await next_messages(sub, 3) == [b"1", b"2", b"3"]
        finally:
            await sub.aclose()

    async def test_every_subscriber_of_the_channel_receives_the_message(self, cache: Cache) -> None:
        channel = unique("ch")
        first = await active_subscription(cache, channel)
        second = await active_subscription(cache, channel)
        try:
            await cache.publish(channel, b"deployed:7")
            assert await next_messages(first, 1) == [b"deployed:7"]
            assert await next_messages(second, 1) == [b"deployed:7"]
        finally:
            await first.aclose()
            await second.aclose()

    async def test_messages_of_other_channels_are_not_delivered(self, cache: Cache) -> None:
        channel, other = unique("ch"), unique("other")
        sub = await active_subscription(cache, channel)
        try:
            await cache.publish(other, b"not for you")
            await cache.publish(channel, b"for you")
            assert await next_messages(sub, 1) == [b"for you"]
        finally:
            await sub.aclose()

    async def test_publishing_after_the_subscriber_closed_succeeds(self, cache: Cache) -> None:
        channel = unique("ch")
        sub = await active_subscription(cache, channel)
        await sub.aclose()
        await cache.publish(channel, b"nobody listens")


# --- Redis outages, on a redis-server of our own -----------------------------------


class TestRedisOutage:
    async def test_every_call_raises_cache_unavailable_once_redis_died(
        self, own_redis: OwnRedis, own_cache: RedisCache
    ) -> None:
        await own_cache.set("k", b"v")
        own_redis.kill()
        calls = [
            own_cache.ping(),
            own_cache.get("k"),
            own_cache.set("k", b"v"),
            own_cache.delete("k"),
            own_cache.claim_many(["d"], 10),
            own_cache.admit_many([Admission("g", ("d",), (RateWindow("rl", 1, 1),), 1)], 10),
            own_cache.confirm_many({"d": 10}),
            own_cache.release_many(["d"]),
            own_cache.publish("ch", b"m"),
        ]
        for call in calls:
            async with asyncio.timeout(FAIL_FAST_BOUND_S):
                with pytest.raises(CacheUnavailable):
                    await call

    async def test_a_frozen_redis_is_unavailable_after_one_read_timeout_and_heals(
        self, own_redis: OwnRedis, own_cache: RedisCache
    ) -> None:
        await own_cache.set("k", b"v")
        assert own_redis.proc is not None
        own_redis.proc.send_signal(signal.SIGSTOP)  # connections open, nothing answered
        try:
            for call in (own_cache.get("k"), own_cache.claim_many(["d"], 10)):
                started = time.monotonic()
                with pytest.raises(CacheUnavailable):
                    await call
                # One 1 s read timeout, not retried (was 4 s): the caller's 503 comes
                # within about a second.
                assert time.monotonic() - started < FROZEN_BOUND_S
        finally:
            own_redis.proc.send_signal(signal.SIGCONT)
        assert await own_cache.get("k") == b"v"

    async def test_subscribing_to_a_dead_redis_raises_cache_unavailable(
        self, own_redis: OwnRedis, own_cache: RedisCache
    ) -> None:
        own_redis.kill()
        async with asyncio.timeout(FAIL_FAST_BOUND_S):
            with pytest.raises(CacheUnavailable):
                await anext(own_cache.subscribe("ch"))

    async def test_a_subscription_raises_when_redis_restarts_and_a_new_one_works(
        self, own_redis: OwnRedis, own_cache: RedisCache
    ) -> None:
        sub = await active_subscription(own_cache, "config")
        own_redis.kill()
        own_redis.start()
        async with asyncio.timeout(FAIL_FAST_BOUND_S):
            with pytest.raises(CacheUnavailable):
                await anext(sub)
        # The caller's recovery: resubscribe; the pool heals for ordinary calls too.
        resubscribed = await active_subscription(own_cache, "config")
        try:
            await own_cache.publish("config", b"deployed:2")
            assert await next_messages(resubscribed, 1) == [b"deployed:2"]
            await own_cache.set("k", b"after restart")
            assert await own_cache.get("k") == b"after restart"
        finally:
            await resubscribed.aclose()

    async def test_a_subscription_raises_when_redis_stops_answering_without_closing(
        self, own_redis: OwnRedis
    ) -> None:
        proxy = TcpRelay(own_redis.port)
        await proxy.start()
        cache = RedisCache(BackendSettings(redis_url=f"redis://127.0.0.1:{proxy.port}/0"))
        await cache.initialize()
        try:
            sub = await active_subscription(cache, "config")
            proxy.frozen = True
            # Found by the idle ping going unanswered, not by a socket error.
            async with asyncio.timeout(FAIL_FAST_BOUND_S):
                with pytest.raises(CacheUnavailable, match="stopped answering"):
                    await anext(sub)
        finally:
            await cache.close()
            await proxy.stop()

    async def test_claims_work_again_after_redis_restarted_and_forgot_the_scripts(
        self, own_redis: OwnRedis, own_cache: RedisCache
    ) -> None:
        assert await own_cache.claim_many(["before"], 60) == [CLAIMED]
        await own_cache.release_many(["before"])
        own_redis.kill()
        own_redis.start()
        assert await own_cache.claim_many(["after"], 60) == [CLAIMED]
        await own_cache.release_many(["after"])
        assert await own_cache.claim_many(["after"], 60) == [CLAIMED]

    async def test_claims_survive_a_restart_of_a_persistent_redis(self, tmp_path: Path) -> None:
        redis = OwnRedis(tmp_path, persistent=True)
        redis.start()
        cache = RedisCache(BackendSettings(redis_url=redis.url))
        await cache.initialize()
        try:
            await cache.claim_many(["pending", "done"], 60)
            await cache.confirm_many({"done": 60})
            redis.kill()
            redis.start()
            assert await cache.claim_many(["pending", "done"], 60) == [PENDING, DONE]
        finally:
            await cache.close()
            redis.kill()

    async def test_initialize_succeeds_while_redis_is_down(self) -> None:
        cache = RedisCache(BackendSettings(redis_url=f"redis://127.0.0.1:{free_port()}/0"))
        await cache.initialize()
        try:
            async with asyncio.timeout(FAIL_FAST_BOUND_S):
                with pytest.raises(CacheUnavailable):
                    await cache.ping()
        finally:
            await cache.close()
