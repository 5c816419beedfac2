"""The ingestion rules, in the order a request meets them (cheap first; nothing reaches the
event log before every check passed):

    size (route) → project/pipeline in the deployed config (404/409) → signature (401)
    → replay (409) → JSON (422) → rate limit (429) → validation (422, per item in a
    batch) → dedup → produce (503) → 2xx

Claims and their release:
- replay: `dps:wh:{project}:{webhook-id}` is claimed for twice the signature tolerance
  once the signature verified. It is kept only if the request was answered 2xx; any
  error releases it, so the sender's retry of a refused or failed delivery (Standard
  Webhooks retries reuse the webhook-id) is not mistaken for a replay. Releasing is safe:
  the signature binds the body, so a replay can only repeat the same request.
- dedup: `dps:dedup:{project}:{event_id}` is claimed for 24 h before producing; if
  producing fails the claims are released, so the retry is produced rather than
  acknowledged as a duplicate of an event that never reached the log. Events without an
  `event_id` use the webhook-id (single) or `{webhook-id}:{index}` (batch item), which
  makes a retried delivery idempotent too.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from app.core.auth import PROJECT_ID_PATTERN
from app.core.errors import (
    ConfigUnavailable,
    DPSError,
    InvalidBatch,
    PayloadTooLarge,
    PipelineNotFound,
    ReplayedWebhook,
    ServiceUnavailable,
)
from app.core.settings import IngestionSettings
from app.db.cache import Cache, CacheUnavailable
from app.schemas.common import OBJECT_ID_PATTERN
from app.schemas.deployment import ConfigSnapshot
from app.schemas.event import EventMessage, loads_json, parse_envelope, shown
from app.schemas.pipeline import WebhookSecrets
from runtime.ingestion.metrics import IngestionMetrics
from runtime.ingestion.producer import RETRY_AFTER_S, EventSink
from runtime.ingestion.ratelimit import IngestRateLimiter
from runtime.ingestion.signature import verify_signature
from runtime.ingestion.validator import (
    CompiledCache,
    CompiledConfig,
    CompiledPipeline,
    ValidEvent,
    validate_event,
)

logger = logging.getLogger(__name__)

_PROJECT_RE = re.compile(PROJECT_ID_PATTERN)
_PIPELINE_RE = re.compile(OBJECT_ID_PATTERN)
_RETRY = {"Retry-After": str(RETRY_AFTER_S)}

T = TypeVar("T")


class SnapshotSource(Protocol):
    """What ingestion needs of the config loader (app/core/config_loader.ConfigLoader)."""

    def peek(self, project_id: str) -> ConfigSnapshot | None: ...

    async def get(self, project_id: str) -> ConfigSnapshot | None: ...


class SecretSource(Protocol):
    """What ingestion needs of the secret provider (app/core/secrets.SecretProvider)."""

    async def get(self, project_id: str, pipeline_id: str) -> WebhookSecrets | None: ...


def replay_key(project_id: str, webhook_id: str) -> str:
    """Returns the cache key that marks a webhook-id as seen."""
    return f"dps:wh:{project_id}:{webhook_id}"


def dedup_key(project_id: str, event_id: str) -> str:
    """Returns the cache key that marks an event id as produced."""
    return f"dps:dedup:{project_id}:{event_id}"


@dataclass(frozen=True, slots=True)
class Target:
    """The deployed pipeline a request is for."""

    project_id: str
    pipeline_id: str
    config: CompiledConfig
    pipeline: CompiledPipeline


@dataclass(slots=True)
class IngestResult:
    """What a request achieved; `rejected` holds batch items only."""

    accepted: int = 0
    duplicates: int = 0
    event_id: str | None = None
    rejected: list[dict[str, Any]] = field(default_factory=list)


class IngestionService:
    """Holds the ingestion rules; the routes only read HTTP and call it."""

    def __init__(
        self,
        settings: IngestionSettings,
        *,
        configs: SnapshotSource,
        secrets: SecretSource,
        cache: Cache,
        sink: EventSink,
        limiter: IngestRateLimiter,
        metrics: IngestionMetrics,
        clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    ) -> None:
        self.settings = settings
        self._configs = configs
        self._secrets = secrets
        self._cache = cache
        self._sink = sink
        self._limiter = limiter
        self.metrics = metrics
        self._compiled = CompiledCache()
        self._clock_ms = clock_ms

    # -- before the body -------------------------------------------------------------------
    async def target(self, project_id: str, pipeline_id: str) -> Target:
        """Returns the deployed, active pipeline.

        Raises PipelineNotFound (malformed ids, no deployed config, pipeline not in it),
        PipelineInactive, or ConfigUnavailable (503) when the config cannot be read.
        """
        if not _PROJECT_RE.fullmatch(project_id) or not _PIPELINE_RE.fullmatch(pipeline_id):
            raise PipelineNotFound(f"Pipeline {shown(project_id)}/{shown(pipeline_id)} not found")
        snapshot = self._configs.peek(project_id)
        if snapshot is None:
            try:
                snapshot = await self._configs.get(project_id)
            except ConfigUnavailable as exc:
                raise ConfigUnavailable(exc.detail, headers=_RETRY) from exc
        if snapshot is None:
            raise PipelineNotFound(f"Project {project_id!r} has no deployed config")
        config = self._compiled.get(snapshot)
        return Target(project_id, pipeline_id, config, config.pipeline(pipeline_id))

    # -- the whole flow --------------------------------------------------------------------
    async def ingest_single(
        self, target: Target, body: bytes, headers: Mapping[str, str]
    ) -> IngestResult:
        """Verifies, validates, dedups and produces one event.

        Returns accepted=1 (new) or duplicates=1 (event id seen within 24 h), with the
        event id. Raises InvalidSignature, ReplayedWebhook, MalformedJSON, RateLimited,
        InvalidEvent, UnknownEvent, EventInFuture, EventLogUnavailable, or
        ServiceUnavailable (cache down).
        """
        webhook_id = await self._authenticate(target, body, headers)
        return await self._releasing_replay(
            target, webhook_id, self._single(target, body, webhook_id)
        )

    async def ingest_batch(
        self, target: Target, body: bytes, headers: Mapping[str, str]
    ) -> IngestResult:
        """As ingest_single for `{"events": [...]}`: invalid items are listed in
        `rejected` (index, error, detail, fields) and the rest is accepted.

        Raises, for the whole batch, what ingest_single raises for the request plus
        InvalidBatch (not an `events` list) and PayloadTooLarge (too many events, or one
        event over the per-event limit).
        """
        webhook_id = await self._authenticate(target, body, headers)
        return await self._releasing_replay(
            target, webhook_id, self._batch(target, body, webhook_id)
        )

    async def _authenticate(self, target: Target, body: bytes, headers: Mapping[str, str]) -> str:
        try:
            secrets = await self._secrets.get(target.project_id, target.pipeline_id)
        except ConfigUnavailable as exc:
            raise ConfigUnavailable(exc.detail, headers=_RETRY) from exc
        webhook_id = verify_signature(
            body, headers, secrets, tolerance_s=self.settings.signature_tolerance_seconds
        )
        key = replay_key(target.project_id, webhook_id)
        ttl = 2 * self.settings.signature_tolerance_seconds
        if not await self._cache_call(self._cache.add_if_absent(key, ttl)):
            raise ReplayedWebhook(
                f"webhook-id {webhook_id!r} was already received; a delivery is accepted "
                "once (its events were handled by the first one)"
            )
        return webhook_id

    async def _releasing_replay(
        self, target: Target, webhook_id: str, work: Awaitable[IngestResult]
    ) -> IngestResult:
        try:
            return await work
        except BaseException:
            await self._release([replay_key(target.project_id, webhook_id)])
            raise

    async def _single(self, target: Target, body: bytes, webhook_id: str) -> IngestResult:
        document = loads_json(body.decode())
        await self._limiter.charge(target.project_id, target.pipeline_id, 1)
        now_ms = self._clock_ms()
        valid = self._validate(target, document, now_ms)
        message = self._message(target, valid, valid.event_id or webhook_id, now_ms)
        accepted, duplicates = await self._produce_new(target, [message])
        self._count(accepted, duplicates)
        return IngestResult(accepted, duplicates, event_id=message.event_id)

    async def _batch(self, target: Target, body: bytes, webhook_id: str) -> IngestResult:
        events = self._batch_events(loads_json(body.decode()), len(body))
        await self._limiter.charge(target.project_id, target.pipeline_id, len(events))
        now_ms = self._clock_ms()
        result = IngestResult()
        messages: list[EventMessage] = []
        seen: set[str] = set()
        for index, item in enumerate(events):
            try:
                valid = self._validate(target, item, now_ms)
            except DPSError as exc:
                result.rejected.append(_rejection(index, exc))
                self.metrics.rejected_events.labels(reason=exc.name).inc()
                continue
            event_id = valid.event_id or f"{webhook_id}:{index}"
            if event_id in seen:  # the same event twice in one batch counts once
                result.duplicates += 1
                continue
            seen.add(event_id)
            messages.append(self._message(target, valid, event_id, now_ms))
        accepted, duplicates = await self._produce_new(target, messages)
        result.accepted = accepted
        result.duplicates += duplicates
        self._count(accepted, result.duplicates)
        return result

    def _count(self, accepted: int, duplicates: int) -> None:
        self.metrics.accepted.inc(accepted)
        self.metrics.deduplicated.inc(duplicates)

    def _batch_events(self, document: object, body_size: int) -> list[Any]:
        if not isinstance(document, dict) or set(document) != {"events"}:
            raise InvalidBatch('A batch body must be a JSON object {"events": [...]}')
        events = document["events"]
        if not isinstance(events, list) or not events:
            raise InvalidBatch('"events" must be a non-empty list of events')
        limit = self.settings.max_batch_events
        if len(events) > limit:
            raise PayloadTooLarge(f"The batch holds {len(events)} events; the limit is {limit}")
        per_event = self.settings.max_event_bytes
        if body_size > per_event:  # a smaller body cannot hold an item over the limit
            for index, item in enumerate(events):
                size = _encoded_size(item)
                if size > per_event:
                    raise PayloadTooLarge(
                        f"events[{index}] is {size} bytes as compact JSON; the per-event "
                        f"limit is {per_event}"
                    )
        return events

    def _validate(self, target: Target, document: object, now_ms: int) -> ValidEvent:
        return validate_event(
            target.pipeline,
            parse_envelope(document),
            now_ms=now_ms,
            max_future_ms=self.settings.max_future_seconds * 1000,
            unknown_properties=self.settings.unknown_properties,
        )

    def _message(
        self, target: Target, valid: ValidEvent, event_id: str, now_ms: int
    ) -> EventMessage:
        return EventMessage(
            project_id=target.project_id,
            pipeline_id=target.pipeline_id,
            event=valid.event,
            user_id=valid.user_id,
            event_id=event_id,
            event_time_ms=valid.event_time_ms,
            received_at_ms=now_ms,
            version=target.config.version,
            properties=valid.properties,
        )

    # -- dedup and produce -----------------------------------------------------------------
    async def _produce_new(
        self, target: Target, messages: Sequence[EventMessage]
    ) -> tuple[int, int]:
        """Claims each message's event id and produces the newly claimed ones; returns
        (produced, duplicates). Releases the claims if producing fails."""
        if not messages:
            return 0, 0
        ttl = self.settings.dedup_ttl_seconds
        keys = [dedup_key(target.project_id, m.event_id) for m in messages]
        claimed = await self._claim_all(keys, ttl)
        new = [m for m, ok in zip(messages, claimed, strict=True) if ok]
        if new:
            try:
                await self._sink.produce(new)
            except BaseException:
                await self._release([k for k, ok in zip(keys, claimed, strict=True) if ok])
                raise
        return len(new), len(messages) - len(new)

    async def _claim_all(self, keys: Sequence[str], ttl: int) -> list[bool]:
        if len(keys) == 1:
            return [await self._cache_call(self._cache.add_if_absent(keys[0], ttl))]
        try:
            return await self._cache.add_many_if_absent(keys, ttl)
        except CacheUnavailable as exc:
            # Which keys got claimed is unknown. Releasing them all may free a concurrent
            # duplicate's claim (at worst a duplicate record, which consumers drop by
            # event id); keeping them could turn this batch's retry into "duplicates" of
            # events that were never produced.
            await self._release(keys)
            raise _cache_down(exc) from exc

    async def _release(self, keys: Sequence[str]) -> None:
        """Deletes claims, retrying briefly. If the cache stays down the rest are left to
        expire and logged: until then a retry of those events is taken for a duplicate
        (the one loss window left, needing Kafka and Redis to fail together)."""
        for done, key in enumerate(keys):
            for attempt in range(3):
                try:
                    await self._cache.delete(key)
                    break
                except CacheUnavailable as exc:
                    if attempt == 2:
                        logger.error(
                            "could not release %d claim(s), first %s: %s",
                            len(keys) - done,
                            key,
                            exc,
                        )
                        return
                    await asyncio.sleep(0.05 * (attempt + 1))

    async def _cache_call(self, call: Awaitable[T]) -> T:
        try:
            return await call
        except CacheUnavailable as exc:
            raise _cache_down(exc) from exc


def _cache_down(exc: CacheUnavailable) -> ServiceUnavailable:
    logger.warning("cache unavailable: %s", exc)
    return ServiceUnavailable(
        "The cache (replay and dedup checks) is unavailable; nothing was accepted, retry later",
        headers=_RETRY,
    )


def _encoded_size(item: object) -> int:
    # Lone surrogates cannot be UTF-8; "replace" counts them as one byte (the item is
    # rejected by validation anyway).
    text = json.dumps(item, separators=(",", ":"), ensure_ascii=False)
    return len(text.encode("utf-8", "replace"))


def _rejection(index: int, exc: DPSError) -> dict[str, Any]:
    entry: dict[str, Any] = {"index": index, "error": exc.name, "detail": exc.detail}
    if exc.fields:
        entry["fields"] = [f.model_dump() for f in exc.fields]
    return entry
