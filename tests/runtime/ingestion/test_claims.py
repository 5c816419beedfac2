"""Two-phase replay and dedup claims through the HTTP API, on the real servers.

Another replica's request in flight is a *pending* claim in Redis: those are written here
directly (as that replica's admission would); TestConcurrentRequests sends real
concurrent requests. Nothing is ever acknowledged on behalf of a pending claim.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from app.db.cache import Cache, ClaimState
from runtime.ingestion.claims import dedup_key, replay_key
from tests.runtime.ingestion.conftest import IngestApp, Pipeline, deploy_pipeline
from tests.runtime.ingestion.helpers import event

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.mongodb]


def cache_of(pipe: Pipeline) -> Cache:
    cache = pipe.ingest.resources.cache
    assert cache is not None
    return cache


async def in_flight_elsewhere(pipe: Pipeline, *keys: str) -> None:
    """Another replica claimed these keys and is producing."""
    states = await cache_of(pipe).claim_many(keys, 60)
    assert states == [ClaimState.CLAIMED] * len(keys)


def assert_in_flight(response: Any) -> None:
    assert response.status_code == 409, response.text
    assert response.json()["error"] == "EventInFlight"
    assert response.headers["retry-after"] == "1"


class TestSingleEvent:
    async def test_claims_are_done_once_a_202_s_confirm_is_sent(self, pipeline: Pipeline) -> None:
        payload = event()
        assert (await pipeline.post(payload, webhook_id="msg_done")).status_code == 202
        await pipeline.ingest.confirms_sent()
        cache = cache_of(pipeline)
        assert await cache.get(dedup_key(pipeline.project_id, payload["event_id"])) == b"done"
        assert await cache.get(replay_key(pipeline.project_id, "msg_done")) == b"done"

    async def test_a_resend_right_after_the_202_is_a_duplicate_and_a_replay(
        self, pipeline: Pipeline
    ) -> None:
        # No wait for the confirm: it goes to the cache before the resend's admission.
        payload = event()
        assert (await pipeline.post(payload, webhook_id="msg_again")).status_code == 202
        resent = await pipeline.post(payload)
        assert (resent.status_code, resent.json()["duplicates"]) == (200, 1)
        replayed = await pipeline.post(payload, webhook_id="msg_again")
        assert (replayed.status_code, replayed.json()["error"]) == (409, "ReplayedWebhook")
        assert len(await pipeline.messages()) == 1

    async def test_event_in_flight_elsewhere_is_409_and_not_produced(
        self, pipeline: Pipeline
    ) -> None:
        payload = event()
        await in_flight_elsewhere(pipeline, dedup_key(pipeline.project_id, payload["event_id"]))
        assert_in_flight(await pipeline.post(payload))
        assert await pipeline.messages() == []

    async def test_retry_after_the_other_request_confirmed_is_a_duplicate(
        self, pipeline: Pipeline
    ) -> None:
        payload = event()
        key = dedup_key(pipeline.project_id, payload["event_id"])
        await in_flight_elsewhere(pipeline, key)
        assert_in_flight(await pipeline.post(payload, webhook_id="msg_wait"))
        await cache_of(pipeline).confirm_many({key: 60})
        # Same webhook-id: the refused delivery released its replay claim.
        retry = await pipeline.post(payload, webhook_id="msg_wait")
        assert retry.status_code == 200, retry.text
        assert retry.json()["duplicates"] == 1
        assert await pipeline.messages() == []

    async def test_retry_after_the_other_request_failed_is_produced(
        self, pipeline: Pipeline
    ) -> None:
        payload = event()
        key = dedup_key(pipeline.project_id, payload["event_id"])
        await in_flight_elsewhere(pipeline, key)
        assert_in_flight(await pipeline.post(payload))
        await cache_of(pipeline).release_many([key])
        assert (await pipeline.post(payload)).status_code == 202
        assert [m.event_id for m in await pipeline.messages()] == [payload["event_id"]]

    async def test_webhook_id_in_flight_is_409_and_claims_nothing(self, pipeline: Pipeline) -> None:
        payload = event()
        replay = replay_key(pipeline.project_id, "msg_busy")
        await in_flight_elsewhere(pipeline, replay)
        assert_in_flight(await pipeline.post(payload, webhook_id="msg_busy"))
        assert (
            await cache_of(pipeline).get(dedup_key(pipeline.project_id, payload["event_id"]))
            is None
        )
        await cache_of(pipeline).release_many([replay])
        assert (await pipeline.post(payload, webhook_id="msg_busy")).status_code == 202

    async def test_replayed_webhook_is_refused_before_claiming_its_event(
        self, pipeline: Pipeline
    ) -> None:
        assert (await pipeline.post(event(), webhook_id="msg_twice")).status_code == 202
        other = event()  # another body under the same webhook-id (a sender's bug)
        response = await pipeline.post(other, webhook_id="msg_twice")
        assert response.status_code == 409
        assert response.json()["error"] == "ReplayedWebhook"
        assert (
            await cache_of(pipeline).get(dedup_key(pipeline.project_id, other["event_id"])) is None
        )

    async def test_rate_limited_event_holds_no_claim(self, ingest: IngestApp) -> None:
        pipe = await deploy_pipeline(ingest, ingest.limited_projects[0])
        for _ in range(3):
            assert (await pipe.post(event())).status_code == 202
        payload = event()
        response = await pipe.post(payload, webhook_id="msg_limited")
        assert response.status_code == 429, response.text
        cache = cache_of(pipe)
        assert await cache.get(dedup_key(pipe.project_id, payload["event_id"])) is None
        assert await cache.get(replay_key(pipe.project_id, "msg_limited")) is None


class TestSingleEventOrder:
    """Signature → JSON → validation → admission (claims and rate limit in one call): a
    rate-limit charge only for a valid event that is not a replay nor in flight."""

    async def test_replays_are_refused_without_being_charged(self, ingest: IngestApp) -> None:
        pipe = await deploy_pipeline(ingest, ingest.limited_projects[1])  # 3 events a minute
        payload = event()
        assert (await pipe.post(payload, webhook_id="msg_once")).status_code == 202
        for _ in range(3):
            replay = await pipe.post(payload, webhook_id="msg_once")
            assert replay.json()["error"] == "ReplayedWebhook"
        assert [(await pipe.post(event())).status_code for _ in range(2)] == [202, 202]
        assert (await pipe.post(event())).status_code == 429

    async def test_invalid_events_are_refused_without_being_charged(
        self, ingest: IngestApp
    ) -> None:
        pipe = await deploy_pipeline(ingest, ingest.limited_projects[2])  # 3 events a minute
        for _ in range(4):
            invalid = await pipe.post(event(properties={}))
            assert invalid.json()["error"] == "InvalidEvent"
        assert [(await pipe.post(event())).status_code for _ in range(3)] == [202, 202, 202]
        refused = await pipe.post(event(properties={}))
        assert refused.json()["error"] == "InvalidEvent"  # validation comes first
        assert (await pipe.post(event())).status_code == 429


class TestConcurrentRequests:
    async def test_one_event_id_sent_concurrently_is_produced_once(
        self, pipeline: Pipeline
    ) -> None:
        payload = event()
        responses = await asyncio.gather(*(pipeline.post(payload) for _ in range(8)))
        statuses = sorted(r.status_code for r in responses)
        # One request produces it; the others find its claim pending (409 EventInFlight,
        # nothing acknowledged) or already done (200 duplicate).
        assert statuses.count(202) == 1, [r.text for r in responses]
        assert set(statuses) <= {200, 202, 409}
        assert all(r.json()["error"] == "EventInFlight" for r in responses if r.status_code == 409)
        assert [m.event_id for m in await pipeline.messages()] == [payload["event_id"]]


class TestBatch:
    async def test_items_in_flight_elsewhere_are_rejected_and_the_rest_accepted(
        self, pipeline: Pipeline
    ) -> None:
        busy, fine, invalid = event(), event(), event(event="nope")
        await in_flight_elsewhere(pipeline, dedup_key(pipeline.project_id, busy["event_id"]))
        response = await pipeline.post({"events": [invalid, busy, fine]}, batch=True)
        assert response.status_code == 202, response.text
        body = response.json()
        assert (body["accepted"], body["duplicates"]) == (1, 0)
        assert [(r["index"], r["error"]) for r in body["rejected"]] == [
            (0, "UnknownEvent"),
            (1, "EventInFlight"),
        ]
        assert response.headers["retry-after"] == "1"
        assert [m.event_id for m in await pipeline.messages()] == [fine["event_id"]]

    async def test_a_batch_without_items_in_flight_has_no_retry_after(
        self, pipeline: Pipeline
    ) -> None:
        response = await pipeline.post({"events": [event(event="nope"), event()]}, batch=True)
        assert response.status_code == 202
        assert "retry-after" not in response.headers

    async def test_confirmed_items_are_duplicates(self, pipeline: Pipeline) -> None:
        seen, new = event(), event()
        key = dedup_key(pipeline.project_id, seen["event_id"])
        await in_flight_elsewhere(pipeline, key)
        await cache_of(pipeline).confirm_many({key: 60})
        response = await pipeline.post({"events": [seen, new]}, batch=True)
        assert response.json() == {"accepted": 1, "duplicates": 1, "late": 0, "rejected": []}
        assert [m.event_id for m in await pipeline.messages()] == [new["event_id"]]

    async def test_batch_whose_webhook_id_is_in_flight_is_409(self, pipeline: Pipeline) -> None:
        await in_flight_elsewhere(pipeline, replay_key(pipeline.project_id, "msg_batch"))
        response = await pipeline.post({"events": [event()]}, batch=True, webhook_id="msg_batch")
        assert_in_flight(response)
        assert await pipeline.messages() == []

    async def test_produced_items_and_the_webhook_id_are_done(self, pipeline: Pipeline) -> None:
        a, b = event(), event()
        response = await pipeline.post({"events": [a, b]}, batch=True, webhook_id="msg_b_done")
        assert response.status_code == 202
        await pipeline.ingest.confirms_sent()
        cache = cache_of(pipeline)
        for payload in (a, b):
            assert await cache.get(dedup_key(pipeline.project_id, payload["event_id"])) == b"done"
        assert await cache.get(replay_key(pipeline.project_id, "msg_b_done")) == b"done"
