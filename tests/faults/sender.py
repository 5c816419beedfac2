"""A storefront that never gives up: it signs each delivery (a new webhook-id every time)
and resends every event with the SAME event id until ingestion answers 2xx for it.

What it was told is kept per answer (202, 200 duplicate, 503 EventLogUnavailable, 409
EventInFlight, connection refused...), so a case can show that its fault was really hit.
Any other answer (a 4xx other than 409/429, a 500) fails the case: the events are valid
and every outage must be a 503, so such an answer is a bug.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx

from runtime.ingestion.signature import sign
from tests.faults.scenario import Event

# A storefront backs off between tries; short, so that a case ends soon after its fault.
RETRY_PAUSE_S = 0.2
# Transient answers: the event was not acknowledged, the same id is sent again. A 500 is
# not among them: an outage must be a 503, so a 500 fails the case.
_TRANSIENT = {409, 429, 503}


class RetryingSender:
    """Sends events to one pipeline through ingestion (single events or batches)."""

    def __init__(
        self, ingest_url: Callable[[], str], project_id: str, pipeline_id: str, secret: str
    ) -> None:
        # A callable: a case may restart ingestion, and the URL is read at every try.
        self._ingest_url = ingest_url
        self._path = f"/ingest/{project_id}/{pipeline_id}"
        self._secret = secret
        self.answers: Counter[str] = Counter()
        self.acknowledged: set[str] = set()
        self._stopping = False

    def _signed(self, payload: Any) -> tuple[bytes, dict[str, str]]:
        body = json.dumps(payload).encode()
        headers = sign(self._secret, f"msg_{uuid.uuid4().hex}", int(time.time()), body)
        headers["content-type"] = "application/json"
        return body, headers

    async def _post(
        self, client: httpx.AsyncClient, url: str, payload: Any
    ) -> httpx.Response | None:
        body, headers = self._signed(payload)
        try:
            return await client.post(url, content=body, headers=headers)
        except httpx.TransportError as exc:  # ingestion down, killed or restarting
            self.answers[type(exc).__name__] += 1
            return None

    def _note(self, response: httpx.Response) -> None:
        name = ""
        if response.status_code >= 400:
            name = " " + str(response.json().get("error", ""))
        self.answers[f"{response.status_code}{name}"] += 1
        if response.status_code >= 400 and response.status_code not in _TRANSIENT:
            raise AssertionError(f"ingestion refused a valid event: {response.text}")

    async def send_one(self, client: httpx.AsyncClient, event: Event) -> None:
        """Resends `event` until 202 (produced) or 200 (a duplicate of an acknowledged
        copy)."""
        while True:
            response = await self._post(client, self._ingest_url() + self._path, event.envelope())
            if response is not None:
                self._note(response)
                if response.status_code in (200, 202):
                    self.acknowledged.add(event.event_id)
                    return
            await asyncio.sleep(RETRY_PAUSE_S)

    async def probe(self, event: Event) -> None:
        """Sends `event` until 2xx, taking 404 as "the deployment has not reached ingestion
        yet" (ProjectNotFound, PipelineNotFound) rather than as a refusal."""
        async with httpx.AsyncClient(timeout=10.0) as client:
            while True:
                response = await self._post(
                    client, self._ingest_url() + self._path, event.envelope()
                )
                if response is not None and response.status_code in (200, 202):
                    return
                if response is not None and response.status_code not in (404, *_TRANSIENT):
                    raise AssertionError(f"probe refused: {response.text}")
                await asyncio.sleep(RETRY_PAUSE_S)

    async def send_batch(self, client: httpx.AsyncClient, events: list[Event]) -> None:
        """Sends `events` as one batch, then resends the items that were not acknowledged
        (EventInFlight items, or the whole batch after a 503 or a dropped connection)."""
        pending = list(events)
        while pending:
            payload = {"events": [e.envelope() for e in pending]}
            response = await self._post(client, self._ingest_url() + self._path + "/batch", payload)
            if response is not None:
                self._note(response)
                if response.status_code == 202:
                    rejected = response.json()["rejected"]
                    for item in rejected:
                        self.answers[f"item {item['error']}"] += 1
                        if item["error"] != "EventInFlight":
                            raise AssertionError(f"ingestion refused a valid event: {item}")
                    again = {item["index"] for item in rejected}
                    for i, e in enumerate(pending):
                        if i not in again:
                            self.acknowledged.add(e.event_id)
                    pending = [e for i, e in enumerate(pending) if i in again]
                    if not pending:
                        return
            await asyncio.sleep(RETRY_PAUSE_S)

    async def send_all(
        self,
        events: list[Event],
        *,
        concurrency: int = 4,
        batch_size: int = 0,
        pause_s: float = 0.0,
    ) -> None:
        """Sends the events (one by one, or in batches of `batch_size`) over `concurrency`
        connections, each pausing `pause_s` after each delivery to stretch the stream over
        the case's faults. Returns when every event was acknowledged, or, after `stop()`,
        when every event already sent was: the case then compares with `accepted(events)`."""
        units: list[list[Event]] = (
            [events[i : i + batch_size] for i in range(0, len(events), batch_size)]
            if batch_size
            else [[e] for e in events]
        )
        queue: asyncio.Queue[list[Event]] = asyncio.Queue()
        for unit in units:
            queue.put_nowait(unit)

        async def lane() -> None:
            # Short timeouts: a request to a stopped process fails fast and is retried.
            async with httpx.AsyncClient(timeout=httpx.Timeout(20.0, connect=2.0)) as client:
                while not queue.empty() and not self._stopping:
                    unit = queue.get_nowait()
                    if batch_size:
                        await self.send_batch(client, unit)
                    else:
                        await self.send_one(client, unit[0])
                    await asyncio.sleep(pause_s)

        await asyncio.gather(*(lane() for _ in range(concurrency)))

    def stop(self) -> None:
        """No new event is sent; the ones being sent are still resent until acknowledged."""
        self._stopping = True

    def accepted(self, events: list[Event]) -> list[Event]:
        """The events ingestion acknowledged (2xx), one per event id."""
        return [e for e in events if e.event_id in self.acknowledged]

    def retries_seen(self) -> int:
        """How many tries were not acknowledged (the fault, as the storefront saw it)."""
        return sum(n for answer, n in self.answers.items() if not answer.startswith("20"))
