"""The ingestion rules, in the order a request meets them. Nothing reaches the event log
before every check passed, and nothing is acknowledged before the log stored it.

Single event:
    size (route) → project/pipeline in the deployed config (404/409) → signature (401)
    → JSON (422) → validation (422) → admission: replay claim, dedup claim and rate limit
    in one atomic call (409 ReplayedWebhook or EventInFlight, 429; or a duplicate)
    → produce (503) → 202 (200 for a duplicate), the claims' confirm queued
Batch:
    size → project/pipeline → signature → JSON (422, 413) → admission: replay claim and
    rate limit (409, 429) → validation (per item) → dedup claims (per item) → produce
    (503) → 202, the confirm queued

Why the orders differ. A single event's parsing and validation are pure and cheap, so
they go first and everything it needs of Redis before producing is one round trip. A
batch's claims are up to 2,500 keys, and validating 2,500 items is not cheap: a flood of
batches that the rate limit refuses must cost neither, so a batch is admitted (replay
claim and charge) before any per-item work. In both, a refused admission takes nothing:
a replay is refused before any effect, a 429 holds no claim.

Redis round trips of an accepted request: single event 2 (admission, confirm); batch 3
(admission, dedup claims, confirm) whatever its size. At most: the confirm is sent after
the answer, on the next admission call when another request follows (claims.py), and
concurrent requests share their admission calls, so under load a single event costs a
fraction of one round trip. Kafka: one produce, whose records share produce requests
with the concurrent requests' (the producer's linger).

Claims are two-phase, pending while producing and done after (runtime/ingestion/claims.py
has the protocol and its failure cases):
- replay `dps:wh:{project}:{webhook-id}`: done (for twice the signature tolerance) only
  if the request was answered 2xx; any error releases it, so the sender's retry of a
  refused or failed delivery (Standard Webhooks retries reuse the webhook-id) is not
  mistaken for a replay. Releasing is safe: the signature binds the body, so a replay
  can only repeat the same request.
- dedup `dps:dedup:{project}:{event_id}`: done for 24 h once produced; released if
  producing fails. Events without an `event_id` use the webhook-id (single) or
  `{webhook-id}:{index}` (batch item), which makes a retried delivery idempotent too.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from app.core.auth import PROJECT_ID_PATTERN
from app.core.errors import (
    ConfigUnavailable,
    DPSError,
    EventInFlight,
    InvalidBatch,
    PayloadTooLarge,
    PipelineNotFound,
)
from app.core.settings import IngestionSettings
from app.db.cache import Admission, Admitted, Cache, ClaimState, Verdict
from app.schemas.common import OBJECT_ID_PATTERN
from app.schemas.deployment import ConfigSnapshot
from app.schemas.event import EventMessage, loads_json, parse_envelope, shown
from app.schemas.pipeline import WebhookSecrets
from runtime.ingestion.claims import Claims, check_replay, dedup_key, in_flight, replay_key
from runtime.ingestion.metrics import IngestionMetrics
from runtime.ingestion.producer import RETRY_AFTER_S, EventSink
from runtime.ingestion.ratelimit import RateLimits
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


class SnapshotSource(Protocol):
    """What ingestion needs of the config loader (app/core/config_loader.ConfigLoader)."""

    def peek(self, project_id: str) -> ConfigSnapshot | None: ...

    async def get(self, project_id: str) -> ConfigSnapshot | None: ...


class SecretSource(Protocol):
    """What ingestion needs of the secret provider (app/core/secrets.SecretProvider)."""

    async def get(self, project_id: str, pipeline_id: str) -> WebhookSecrets | None: ...


@dataclass(frozen=True, slots=True)
class Target:
    """The deployed pipeline a request is for."""

    project_id: str
    pipeline_id: str
    config: CompiledConfig
    pipeline: CompiledPipeline


@dataclass(slots=True)
class IngestResult:
    """What a request achieved; `rejected` holds batch items only. `late` counts the
    accepted events older than every window they feed (see lateness.py)."""

    accepted: int = 0
    duplicates: int = 0
    late: int = 0
    event_id: str | None = None
    rejected: list[dict[str, Any]] = field(default_factory=list)

    @property
    def in_flight(self) -> bool:
        """Whether a batch item was refused as EventInFlight (the answer then carries
        Retry-After)."""
        return any(r["error"] == EventInFlight.__name__ for r in self.rejected)


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
        limits: RateLimits,
        metrics: IngestionMetrics,
        clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    ) -> None:
        self.settings = settings
        self._configs = configs
        self._secrets = secrets
        self._claims = Claims(
            cache,
            metrics,
            pending_ttl_s=settings.claim_ttl_seconds,
            dedup_ttl_s=settings.dedup_ttl_seconds,
            replay_ttl_s=2 * settings.signature_tolerance_seconds,
        )
        self._sink = sink
        self._limits = limits
        self.metrics = metrics
        self._compiled = CompiledCache()
        self._clock_ms = clock_ms

    async def drain(self) -> None:
        """Returns once the confirms of answered requests were sent to the cache (at
        shutdown, before the cache closes)."""
        await self._claims.drain()

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
        event id. Raises InvalidSignature, MalformedJSON, InvalidEvent, UnknownEvent,
        EventInFuture, ReplayedWebhook, EventInFlight (the webhook-id or the event id is
        being produced by another request), RateLimited, EventLogUnavailable, or
        ServiceUnavailable (cache down).
        """
        webhook_id = await self._authenticate(target, body, headers)
        now_ms = self._clock_ms()
        valid = self._validate(target, loads_json(body.decode()), now_ms)
        message = self._message(target, valid, valid.event_id or webhook_id, now_ms)
        replay = replay_key(target.project_id, webhook_id)
        dedup = dedup_key(target.project_id, message.event_id)
        windows = self._limits.windows(target.project_id, target.pipeline_id, 1)
        admission = Admission(replay, (dedup,), windows, cost=1, exclusive=True)
        admitted = await self._claims.admit(admission)
        self._refuse_unless_admitted(target, webhook_id, admitted, message.event_id)
        new = admitted.claims[0] is ClaimState.CLAIMED
        try:
            if new:
                await self._sink.produce([message])
        except BaseException:
            await self._claims.release([replay, dedup] if new else [replay])
            raise
        confirm = {replay: self._claims.replay_ttl_s}
        if new:
            confirm[dedup] = self._claims.dedup_ttl_s
        self._claims.confirm(confirm)
        late = int(new and self._is_late(target, message))
        self._count(int(new), int(not new), late)
        return IngestResult(int(new), int(not new), late, event_id=message.event_id)

    async def ingest_batch(
        self, target: Target, body: bytes, headers: Mapping[str, str]
    ) -> IngestResult:
        """As ingest_single for `{"events": [...]}`: invalid items, and items whose
        event id another request is producing (EventInFlight: resend them later, in a
        new delivery), are listed in `rejected` (index, error, detail, fields) and the
        rest is accepted.

        Raises, for the whole batch, what ingest_single raises for the request plus
        InvalidBatch (not an `events` list) and PayloadTooLarge (too many events, or one
        event over the per-event limit).
        """
        webhook_id = await self._authenticate(target, body, headers)
        events = self._batch_events(loads_json(body.decode()), len(body))
        replay = replay_key(target.project_id, webhook_id)
        cost = len(events)
        windows = self._limits.windows(target.project_id, target.pipeline_id, cost)
        admitted = await self._claims.admit(Admission(replay, windows=windows, cost=cost))
        self._refuse_unless_admitted(target, webhook_id, admitted, None)
        try:
            result, produced = await self._batch(target, events, webhook_id)
        except BaseException:
            await self._claims.release([replay])
            raise
        confirm = dict.fromkeys(produced, self._claims.dedup_ttl_s)
        confirm[replay] = self._claims.replay_ttl_s
        self._claims.confirm(confirm)
        self._count(result.accepted, result.duplicates, result.late)
        return result

    async def _authenticate(self, target: Target, body: bytes, headers: Mapping[str, str]) -> str:
        try:
            secrets = await self._secrets.get(target.project_id, target.pipeline_id)
        except ConfigUnavailable as exc:
            raise ConfigUnavailable(exc.detail, headers=_RETRY) from exc
        return verify_signature(
            body, headers, secrets, tolerance_s=self.settings.signature_tolerance_seconds
        )

    def _refuse_unless_admitted(
        self, target: Target, webhook_id: str, admitted: Admitted, event_id: str | None
    ) -> None:
        """Returns if the request was admitted; raises ReplayedWebhook or EventInFlight
        (its webhook-id, or `event_id`, is held) or RateLimited."""
        if admitted.verdict is Verdict.GUARD_HELD:
            check_replay(webhook_id, admitted.guard_state)
        if admitted.verdict is Verdict.IN_FLIGHT:
            raise in_flight(f"An event with event_id {shown(event_id)} is being produced")
        if admitted.verdict is Verdict.LIMITED:
            raise self._limits.refusal(target.project_id, admitted)

    async def _batch(
        self, target: Target, events: list[Any], webhook_id: str
    ) -> tuple[IngestResult, list[str]]:
        """Returns the result and the dedup keys of the events it produced."""
        now_ms = self._clock_ms()
        result = IngestResult()
        candidates: list[tuple[int, EventMessage]] = []
        seen: set[str] = set()
        for index, item in enumerate(events):
            try:
                valid = self._validate(target, item, now_ms)
            except DPSError as exc:
                self._reject(result, index, exc)
                continue
            event_id = valid.event_id or f"{webhook_id}:{index}"
            if event_id in seen:  # the same event twice in one batch counts once
                result.duplicates += 1
                continue
            seen.add(event_id)
            candidates.append((index, self._message(target, valid, event_id, now_ms)))
        produced = await self._produce_new(target, candidates, result)
        result.rejected.sort(key=lambda r: int(r["index"]))
        return result, produced

    def _reject(self, result: IngestResult, index: int, exc: DPSError) -> None:
        result.rejected.append(_rejection(index, exc))
        self.metrics.rejected_events.labels(reason=exc.name).inc()

    def _count(self, accepted: int, duplicates: int, late: int) -> None:
        if accepted:
            self.metrics.accepted.inc(accepted)
        if duplicates:
            self.metrics.deduplicated.inc(duplicates)
        if late:
            self.metrics.late.inc(late)

    def _is_late(self, target: Target, message: EventMessage) -> bool:
        return target.config.lateness.is_late(
            target.pipeline_id, message.event, message.event_time_ms, message.received_at_ms
        )

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
        # Every value was checked above (types included): no second validation.
        return EventMessage.model_construct(
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
        self, target: Target, candidates: Sequence[tuple[int, EventMessage]], result: IngestResult
    ) -> list[str]:
        """Claims each (index, message)'s event id and produces the newly claimed ones;
        counts them in `result` (accepted, duplicates, in-flight rejections) and returns
        their dedup keys. Releases the claims if producing fails."""
        if not candidates:
            return []
        keys = [dedup_key(target.project_id, m.event_id) for _, m in candidates]
        states = await self._claims.claim(keys)
        new_keys: list[str] = []
        new: list[EventMessage] = []
        for key, (index, message), state in zip(keys, candidates, states, strict=True):
            if state is ClaimState.CLAIMED:
                new_keys.append(key)
                new.append(message)
            elif state is ClaimState.DONE:
                result.duplicates += 1
            else:
                what = f"An event with event_id {shown(message.event_id)} is being produced"
                self._reject(result, index, in_flight(what))
        if new:
            try:
                await self._sink.produce(new)
            except BaseException:
                await self._claims.release(new_keys)
                raise
        result.accepted = len(new)
        result.late = sum(self._is_late(target, m) for m in new)
        return new_keys


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
