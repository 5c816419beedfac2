"""Two-phase replay and dedup claims: nothing is ever acknowledged that was not produced.

Keys: `dps:wh:{project}:{webhook-id}` (replay) and `dps:dedup:{project}:{event_id}`
(dedup). A request claims its keys *pending* for INGEST_CLAIM_TTL_SECONDS (60 s; longer
than any produce: INGEST_PRODUCE_TIMEOUT_SECONDS + a margin), produces, and only then
confirms them *done* (dedup: INGEST_DEDUP_TTL_SECONDS, 24 h; replay: twice the
signature tolerance). What a later request finds under a key decides its answer:

A request takes its claims with its rate-limit charge in one atomic step
(`Claims.admit`, Cache.admit_many): admitted whole, or refused with nothing claimed or
charged, so a refusal has nothing to release.

The confirm is queued once the event log acknowledged, and the answer does not wait for
it: it rides on the next admission call (before that call's admissions, in the same
script) or goes in a call of its own when no request follows. So a request this process
admits after another one was answered finds that one's keys done; another replica may
meet them pending for a round trip's time and answer 409 EventInFlight, whose retry is
then a duplicate.

- nothing: it claims the key and goes on;
- done: a duplicate (200, nothing produced) or a replayed webhook (409 ReplayedWebhook);
- pending: another request is producing it right now, or died (or lost the cache)
  before it could confirm or release. Nothing may be acknowledged on its behalf, so the
  answer is 409 `EventInFlight` with Retry-After (a batch lists the item as rejected),
  and the sender's retry gets "duplicate" once the other request confirmed, or is
  produced once the claim was released or expired.

Failure cases, the reason for the two phases:
- the produce fails: the claims are released (best effort). If the cache is down too,
  they stay pending and expire within the claim TTL; until then retries get 409
  EventInFlight, never a false "duplicate" (the single-phase claim kept a 24 h "seen"
  mark here, and the retry of an event that was never produced was acknowledged).
- the produce succeeded but confirming fails (cache down; the 2xx may already be
  sent): it is right (the event is in the log), but the pending claims expire and a
  retry after that is produced again: a duplicate record in the log, which compute drops
  by event id (each user record remembers the event ids it applied:
  app/tiles/record.py). Ingestion is at-least-once into the log, never at-most-once;
  these claims only spare the log.
- the claim itself fails (cache down): 503, and nothing is released: the admit script
  is atomic, so either nothing was claimed or the reply was lost after it ran; in the
  second case releasing would also free claims of concurrent requests.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence

from app.core.errors import EventInFlight, ReplayedWebhook, ServiceUnavailable
from app.db.cache import Admission, Admitted, Cache, CacheUnavailable, ClaimState
from runtime.ingestion.coalesce import Coalescer
from runtime.ingestion.metrics import IngestionMetrics
from runtime.ingestion.producer import RETRY_AFTER_S

logger = logging.getLogger(__name__)

_RELEASE_ATTEMPTS = 3
# Admissions and confirms of this many requests at most share one cache call (a few
# hundred keys: well under a millisecond of Redis' time).
_MAX_COALESCED = 128


def replay_key(project_id: str, webhook_id: str) -> str:
    """Returns the cache key that marks a webhook-id as handled."""
    return f"dps:wh:{project_id}:{webhook_id}"


def dedup_key(project_id: str, event_id: str) -> str:
    """Returns the cache key that marks an event id as produced."""
    return f"dps:dedup:{project_id}:{event_id}"


def check_replay(webhook_id: str, state: ClaimState) -> None:
    """Returns if this request holds the webhook-id's claim; raises ReplayedWebhook
    (done: the delivery was handled) or EventInFlight (pending: it is being handled)."""
    if state is ClaimState.DONE:
        raise ReplayedWebhook(
            f"webhook-id {webhook_id!r} was already received; a delivery is accepted "
            "once (its events were handled by the first one)"
        )
    if state is ClaimState.PENDING:
        raise in_flight(f"A delivery with webhook-id {webhook_id!r} is being handled")


def in_flight(what: str) -> EventInFlight:
    """Returns the EventInFlight error for `what` (a sentence naming the id)."""
    return EventInFlight(
        f"{what}; nothing was acknowledged. Retry later: it is then a duplicate if that "
        "request succeeded, or accepted if it failed"
    )


class Claims:
    """Claims, confirms and releases keys on the cache with the ingestion settings' TTLs.

    Admissions and confirms of concurrent requests share cache calls (coalesce.py): the
    call carrying a request's admission also carries the confirms queued before it, and
    the admissions of the requests that arrived meanwhile."""

    def __init__(
        self,
        cache: Cache,
        metrics: IngestionMetrics,
        *,
        pending_ttl_s: int,
        dedup_ttl_s: int,
        replay_ttl_s: int,
    ) -> None:
        self._cache = cache
        self._metrics = metrics
        self._pending_ttl_s = pending_ttl_s
        self.dedup_ttl_s = dedup_ttl_s
        self.replay_ttl_s = replay_ttl_s
        self._admit_calls = metrics.cache_calls.labels("admit")
        self._confirm_calls = metrics.cache_calls.labels("confirm")
        self._calls: Coalescer[Admission, Admitted, Mapping[str, int]] = Coalescer(
            self._call, max_items=_MAX_COALESCED, failure=_copy, riders_lost=self._unconfirmed
        )

    async def _call(
        self, admissions: list[Admission], confirms: list[Mapping[str, int]]
    ) -> list[Admitted]:
        merged: dict[str, int] = {}
        for one in confirms:
            merged.update(one)
        if not admissions:
            self._confirm_calls.inc()
            await self._cache.confirm_many(merged)
            return []
        self._admit_calls.inc()
        return await self._cache.admit_many(admissions, self._pending_ttl_s, merged)

    async def admit(self, admission: Admission) -> Admitted:
        """Returns the cache's verdict on the admission (see Cache.admit_many), its
        claims now held pending if ADMITTED. Raises ServiceUnavailable (503,
        Retry-After) when the cache is down."""
        try:
            return await self._calls.submit(admission)
        except CacheUnavailable as exc:
            raise cache_down(exc) from exc

    async def claim(self, keys: Sequence[str]) -> list[ClaimState]:
        """Returns the state of each key (see Cache.claim_many), CLAIMED ones now held
        pending. Raises ServiceUnavailable (503, Retry-After) when the cache is down."""
        try:
            return await self._cache.claim_many(keys, self._pending_ttl_s)
        except CacheUnavailable as exc:
            raise cache_down(exc) from exc

    def confirm(self, ttls: Mapping[str, int]) -> None:
        """Marks the keys done with the next cache call (the next admission's, or one of
        their own), and returns at once: the events are produced, so the 2xx does not
        wait. A request admitted after this call sees them done. If the cache is down,
        the pending claims expire: see the module docstring for the duplicate this can
        cause."""
        if ttls:
            self._calls.send(ttls)

    async def drain(self) -> None:
        """Returns once every confirm queued so far was sent (or found lost)."""
        try:
            await self._calls.drain()
        except Exception as exc:  # already counted and logged as unconfirmed
            logger.debug("cache calls ended with %r", exc)

    def _unconfirmed(self, confirms: list[Mapping[str, int]], exc: BaseException) -> None:
        keys = [key for one in confirms for key in one]
        self._metrics.claims_unconfirmed.inc(len(keys))
        logger.error(
            "produced, but could not confirm %d claim(s) (first %s): a retry after "
            "they expire is produced again: %r",
            len(keys),
            keys[0] if keys else None,
            exc,
        )

    async def release(self, keys: Sequence[str]) -> None:
        """Frees pending claims so the sender's retry is handled anew, retrying briefly;
        never raises. Claims it could not free expire within the claim TTL (until then
        their retries get 409 EventInFlight, never a false duplicate)."""
        if not keys:
            return
        for attempt in range(1, _RELEASE_ATTEMPTS + 1):
            try:
                await self._cache.release_many(keys)
                return
            except CacheUnavailable as exc:
                if attempt == _RELEASE_ATTEMPTS:
                    self._metrics.claims_unreleased.inc(len(keys))
                    logger.error(
                        "could not release %d claim(s) (first %s); they expire within %d s: %s",
                        len(keys),
                        keys[0],
                        self._pending_ttl_s,
                        exc,
                    )
                    return
                await asyncio.sleep(0.05 * attempt)


def _copy(exc: Exception) -> Exception:
    """Each waiter's own exception for a shared call's failure (see Coalescer)."""
    if isinstance(exc, CacheUnavailable):
        copy = CacheUnavailable(*exc.args)
        copy.__cause__ = exc
        return copy
    return RuntimeError(f"cache call failed: {exc!r}")


def cache_down(exc: CacheUnavailable) -> ServiceUnavailable:
    """Returns the 503 for a cache outage (logged here)."""
    logger.warning("cache unavailable: %s", exc)
    return ServiceUnavailable(
        "The cache (replay and dedup checks) is unavailable; nothing was accepted, retry later",
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )
