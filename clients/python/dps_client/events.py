"""Sending events, for storefront back-ends: signed, one or a batch, retried safely.

    info = config.webhook(pipeline_id)             # or copy ingest_url/secret from it
    with EventsClient(info["ingest_url"], info["secret"]) as events:
        events.send("add_to_cart", "user-1", {"product_id": "sku-9", "quantity": 2})
        events.send_batch([Event("page_view", "user-2", {"url": "/"}), ...])

Every event carries an `event_id` (one is generated when the caller has none) and keeps
it on every retry, so an event whose first attempt did reach the platform counts once:
the retry is answered as a duplicate. Retried: connection errors, timeouts, 503, 429 and
409 EventInFlight, waiting as Retry-After says. Refused events (unknown event, bad
property, 401 signature) are permanent: raised (single) or listed in `rejected` (batch).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any

import httpx

from dps_client._http import LIMITS, USER_AGENT, acall, call
from dps_client.errors import retry_after_seconds
from dps_client.retry import RetryPolicy
from dps_client.signing import new_event_id, signed_headers

# Below the platform's defaults (2,500 events, 500 KB a batch) with room to spare.
MAX_BATCH_EVENTS = 500
MAX_BATCH_BYTES = 400_000
IN_FLIGHT = "EventInFlight"


@dataclass(slots=True)
class Event:
    """One storefront event. `timestamp` (event time) is a datetime, epoch milliseconds
    or RFC 3339 text; absent means "when the platform receives it"."""

    event: str
    user_id: str
    properties: Mapping[str, Any] = field(default_factory=dict)
    timestamp: datetime | int | str | None = None
    event_id: str = field(default_factory=new_event_id)

    def envelope(self) -> dict[str, Any]:
        """Returns the JSON body the platform expects for this event."""
        body: dict[str, Any] = {
            "event": self.event,
            "user_id": self.user_id,
            "event_id": self.event_id,
            "properties": dict(self.properties),
        }
        if isinstance(self.timestamp, datetime):
            moment = self.timestamp if self.timestamp.tzinfo else self.timestamp.replace(tzinfo=UTC)
            body["timestamp"] = moment.isoformat()
        elif self.timestamp is not None:
            body["timestamp"] = self.timestamp
        return body


@dataclass(frozen=True, slots=True)
class SendResult:
    """One event's outcome: `duplicate` when the platform had it already (a retry of a
    delivery that did get through); `late` when it is older than every window of the
    deployed config (archived, counted in no feature)."""

    event_id: str
    duplicate: bool
    late: bool = False


@dataclass(frozen=True, slots=True)
class Rejection:
    """A batch item the platform refused; `index` is into the list given to send_batch."""

    index: int
    event_id: str
    error: str
    detail: str
    fields: list[dict[str, Any]] = field(default_factory=list)


@dataclass(slots=True)
class BatchResult:
    accepted: int = 0
    duplicates: int = 0
    late: int = 0
    rejected: list[Rejection] = field(default_factory=list)


def _encode(envelopes: Sequence[dict[str, Any]]) -> bytes:
    return json.dumps({"events": list(envelopes)}, separators=(",", ":")).encode()


def _chunks(events: Sequence[Event], max_events: int, max_bytes: int) -> list[list[int]]:
    """Splits the indexes of `events` into batches within both limits."""
    chunks: list[list[int]] = []
    current: list[int] = []
    size = 0
    for index, event in enumerate(events):
        item = len(json.dumps(event.envelope(), separators=(",", ":")).encode()) + 1
        if current and (len(current) >= max_events or size + item > max_bytes):
            chunks.append(current)
            current, size = [], 0
        current.append(index)
        size += item
    if current:
        chunks.append(current)
    return chunks


def _absorb(
    result: BatchResult,
    answer: dict[str, Any],
    sent: Sequence[int],
    events: Sequence[Event],
    *,
    final: bool,
) -> list[int]:
    """Adds one batch answer to `result`; returns the indexes to resend (EventInFlight,
    unless this was the final round, when they are reported as rejected)."""
    result.accepted += int(answer.get("accepted", 0))
    result.duplicates += int(answer.get("duplicates", 0))
    result.late += int(answer.get("late", 0))
    again: list[int] = []
    for item in answer.get("rejected", []):
        index = sent[int(item["index"])]
        if item.get("error") == IN_FLIGHT and not final:
            again.append(index)
            continue
        result.rejected.append(
            Rejection(
                index=index,
                event_id=events[index].event_id,
                error=str(item.get("error", "")),
                detail=str(item.get("detail", "")),
                fields=list(item.get("fields", [])),
            )
        )
    return again


def _single(answer: dict[str, Any], event_id: str) -> SendResult:
    return SendResult(
        event_id=str(answer.get("event_id") or event_id),
        duplicate=int(answer.get("duplicates", 0)) > 0,
        late=int(answer.get("late", 0)) > 0,
    )


def _batch_url(ingest_url: str) -> str:
    return ingest_url.rstrip("/") + "/batch"


class EventsClient:
    """Synchronous sender for one pipeline. `ingest_url` is the webhook info's
    `ingest_url` (`.../ingest/{project}/{pipeline}`), `secret` its `whsec_...` secret."""

    def __init__(
        self,
        ingest_url: str,
        secret: str,
        *,
        timeout: float = 10.0,
        retry: RetryPolicy = RetryPolicy(attempts=6),
        max_batch_events: int = MAX_BATCH_EVENTS,
        max_batch_bytes: int = MAX_BATCH_BYTES,
        http: httpx.Client | None = None,
    ) -> None:
        self.ingest_url = ingest_url.rstrip("/")
        self.retry = retry
        self.max_batch_events = max_batch_events
        self.max_batch_bytes = max_batch_bytes
        self._secret = secret
        self._http = http or httpx.Client(
            headers={"User-Agent": USER_AGENT}, timeout=timeout, limits=LIMITS
        )

    def _post(self, url: str, body: bytes) -> httpx.Response:
        return self._http.post(url, content=body, headers=signed_headers(self._secret, body))

    def send(
        self,
        event: str | Event,
        user_id: str | None = None,
        properties: Mapping[str, Any] | None = None,
        *,
        timestamp: datetime | int | str | None = None,
        event_id: str | None = None,
    ) -> SendResult:
        """Sends one event (an Event, or its parts); returns its outcome. Raises ApiError
        for a refusal (InvalidEvent, UnknownEvent, InvalidSignature...) or when the
        retries ran out, ConnectionFailed when no attempt reached the platform."""
        item = _as_event(event, user_id, properties, timestamp, event_id)
        body = json.dumps(item.envelope(), separators=(",", ":")).encode()
        response = call(lambda: self._post(self.ingest_url, body), self.retry, in_flight=True)
        return _single(response.json(), item.event_id)

    def send_batch(self, events: Sequence[Event]) -> BatchResult:
        """Sends `events` in as few batches as the limits allow; what the platform
        refused is listed in `rejected`, the rest counted as accepted or duplicates."""
        result = BatchResult()
        url = _batch_url(self.ingest_url)
        for pending in _chunks(events, self.max_batch_events, self.max_batch_bytes):
            for round_ in range(self.retry.attempts):
                body = _encode([events[i].envelope() for i in pending])
                response = call(partial(self._post, url, body), self.retry, in_flight=True)
                final = round_ + 1 == self.retry.attempts
                pending = _absorb(result, response.json(), pending, events, final=final)
                if not pending:
                    break
                time.sleep(self.retry.delay(round_, retry_after_seconds(response)))
        return result

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> EventsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncEventsClient:
    """`EventsClient` for asyncio."""

    def __init__(
        self,
        ingest_url: str,
        secret: str,
        *,
        timeout: float = 10.0,
        retry: RetryPolicy = RetryPolicy(attempts=6),
        max_batch_events: int = MAX_BATCH_EVENTS,
        max_batch_bytes: int = MAX_BATCH_BYTES,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.ingest_url = ingest_url.rstrip("/")
        self.retry = retry
        self.max_batch_events = max_batch_events
        self.max_batch_bytes = max_batch_bytes
        self._secret = secret
        self._http = http or httpx.AsyncClient(
            headers={"User-Agent": USER_AGENT}, timeout=timeout, limits=LIMITS
        )

    async def _post(self, url: str, body: bytes) -> httpx.Response:
        return await self._http.post(url, content=body, headers=signed_headers(self._secret, body))

    async def send(
        self,
        event: str | Event,
        user_id: str | None = None,
        properties: Mapping[str, Any] | None = None,
        *,
        timestamp: datetime | int | str | None = None,
        event_id: str | None = None,
    ) -> SendResult:
        item = _as_event(event, user_id, properties, timestamp, event_id)
        body = json.dumps(item.envelope(), separators=(",", ":")).encode()
        response = await acall(
            lambda: self._post(self.ingest_url, body), self.retry, in_flight=True
        )
        return _single(response.json(), item.event_id)

    async def send_batch(self, events: Sequence[Event]) -> BatchResult:
        result = BatchResult()
        url = _batch_url(self.ingest_url)
        for pending in _chunks(events, self.max_batch_events, self.max_batch_bytes):
            for round_ in range(self.retry.attempts):
                body = _encode([events[i].envelope() for i in pending])
                response = await acall(partial(self._post, url, body), self.retry, in_flight=True)
                final = round_ + 1 == self.retry.attempts
                pending = _absorb(result, response.json(), pending, events, final=final)
                if not pending:
                    break
                await asyncio.sleep(self.retry.delay(round_, retry_after_seconds(response)))
        return result

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncEventsClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _as_event(
    event: str | Event,
    user_id: str | None,
    properties: Mapping[str, Any] | None,
    timestamp: datetime | int | str | None,
    event_id: str | None,
) -> Event:
    if isinstance(event, Event):
        return event
    if user_id is None:
        raise TypeError("send(name, user_id, properties): user_id is required")
    return Event(event, user_id, properties or {}, timestamp, event_id=event_id or new_event_id())
