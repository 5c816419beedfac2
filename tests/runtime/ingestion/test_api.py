"""The ingestion HTTP API end to end on real Kafka, Redis and FerretDB: every rejection
with its status and envelope, signatures and rotation, replay, dedup, batches, limits."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from app.core.config_loader import publish_config
from app.core.secrets import write_secrets
from app.schemas.deployment import AggregateFeatureSnapshot
from app.schemas.event import record_key
from tests.conftest import KAFKA_BOOTSTRAP, unique
from tests.runtime.ingestion.conftest import (
    IngestApp,
    Pipeline,
    deploy_pipeline,
    deploy_pipelines,
    ingestion_settings,
    running,
)
from tests.runtime.ingestion.helpers import (
    config_snapshot,
    event,
    new_secrets,
    pipeline_id,
    pipeline_snapshot,
    read_records,
    signed,
)

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.mongodb]


def assert_error(response: Any, status: int, error: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["error"] == error, body
    assert body["detail"]
    return body


class TestAccepted:
    async def test_event_is_produced_with_its_key_before_202(self, pipeline: Pipeline) -> None:
        payload = event(user_id="u-7", timestamp="2024-01-01T00:00:00Z")
        response = await pipeline.post(payload)
        assert response.status_code == 202, response.text
        assert response.json() == {
            "accepted": 1,
            "duplicates": 0,
            "late": 0,
            "event_id": payload["event_id"],
        }
        [message] = await pipeline.messages()
        assert message.event_id == payload["event_id"]
        assert (message.user_id, message.event, message.version) == ("u-7", "add_to_cart", 1)
        assert message.event_time_ms == 1_704_067_200_000
        assert message.properties == payload["properties"]
        assert message.pipeline_id == pipeline.pipeline_id

    async def test_kafka_key_is_project_and_user(self, pipeline: Pipeline) -> None:
        assert (await pipeline.post(event(user_id="u-key"))).status_code == 202
        topic = pipeline.ingest.settings.backends.kafka_topic
        keys = {key for key, _ in await read_records(KAFKA_BOOTSTRAP, topic)}
        assert record_key(pipeline.project_id, "u-key") in keys

    async def test_event_without_event_id_uses_the_webhook_id(self, pipeline: Pipeline) -> None:
        payload = event()
        del payload["event_id"]
        response = await pipeline.post(payload, webhook_id="msg_single_1")
        assert response.json()["event_id"] == "msg_single_1"
        assert [m.event_id for m in await pipeline.messages()] == ["msg_single_1"]

    async def test_event_without_timestamp_gets_the_receive_time(self, pipeline: Pipeline) -> None:
        before = int(time.time() * 1000)
        await pipeline.post(event())
        [message] = await pipeline.messages()
        assert before <= message.event_time_ms == message.received_at_ms <= time.time() * 1000

    async def test_event_just_under_32kb_is_produced_whole(self, pipeline: Pipeline) -> None:
        # Larger than the producer's 16 KB batch size: the record must still go out alone.
        payload = event(properties={"sku": "x" * 32_000})
        assert len(json.dumps(payload)) <= pipeline.ingest.settings.max_event_bytes
        assert (await pipeline.post(payload)).status_code == 202, payload["event_id"]
        [message] = await pipeline.messages()
        assert message.properties["sku"] == payload["properties"]["sku"]

    async def test_charset_utf8_content_type_is_accepted(self, pipeline: Pipeline) -> None:
        headers = {"content-type": "application/json; charset=utf-8"}
        assert (await pipeline.post(event(), headers=headers)).status_code == 202


class TestLateEvents:
    """An event older than every window of the features it feeds is still accepted (the
    archive keeps it) but counted as `late`, so the sender learns it counts nowhere."""

    async def deploy_with_a_feature(self, ingest: IngestApp) -> Pipeline:
        project_id, pid = unique("shop"), pipeline_id()
        feature = AggregateFeatureSnapshot(
            id=pipeline_id(),
            name="cart_adds",
            pipeline_id=pid,
            source_event="add_to_cart",
            aggregation="COUNT",
            field=None,
            time_windows=["5m", "1h"],
            enabled=True,
        )
        snapshot = config_snapshot(project_id, [pipeline_snapshot(pid)])
        cache = ingest.resources.cache
        assert cache is not None
        await publish_config(cache, snapshot.model_copy(update={"features": [feature]}))
        secrets = new_secrets()
        await write_secrets(cache, project_id, pid, secrets)
        return Pipeline(ingest, project_id, pid, secrets)

    async def test_single_event_from_1970_is_accepted_and_counted_late(self, ingest: IngestApp):
        pipeline = await self.deploy_with_a_feature(ingest)
        response = await pipeline.post(event(timestamp=0))
        assert response.status_code == 202, response.text
        assert (response.json()["accepted"], response.json()["late"]) == (1, 1)
        assert len(await pipeline.messages()) == 1

    async def test_batch_counts_only_the_events_outside_every_window(self, ingest: IngestApp):
        pipeline = await self.deploy_with_a_feature(ingest)
        now_ms = int(time.time() * 1000)
        times = [now_ms - 30 * 60_000, now_ms - 100 * 86_400_000, now_ms, now_ms - 3 * 3_600_000]
        response = await pipeline.post({"events": [event(timestamp=t) for t in times]}, batch=True)
        assert response.status_code == 202, response.text
        body = response.json()
        assert (body["accepted"], body["late"], body["rejected"]) == (4, 2, [])

    async def test_duplicate_of_a_late_event_is_not_counted_late_again(self, ingest: IngestApp):
        pipeline = await self.deploy_with_a_feature(ingest)
        payload = event(timestamp=0)
        await pipeline.post(payload)
        again = await pipeline.post(payload)
        assert (again.json()["duplicates"], again.json()["late"]) == (1, 0)


class TestDedup:
    async def test_same_event_id_twice_is_produced_once(self, pipeline: Pipeline) -> None:
        payload = event()
        first = await pipeline.post(payload)
        second = await pipeline.post(payload)  # a new webhook-id: not a replay
        assert first.status_code == 202
        assert second.status_code == 200
        assert second.json() == {
            "accepted": 0,
            "duplicates": 1,
            "late": 0,
            "event_id": payload["event_id"],
        }
        assert len(await pipeline.messages()) == 1

    async def test_same_event_id_in_another_project_is_not_a_duplicate(
        self, pipeline: Pipeline, ingest: IngestApp
    ) -> None:
        other = await deploy_pipeline(ingest, unique("shop"))
        payload = event()
        assert (await pipeline.post(payload)).status_code == 202
        assert (await other.post(payload)).status_code == 202

    async def test_batch_duplicates_count_once_and_later_batches_see_them(
        self, pipeline: Pipeline
    ) -> None:
        a, b = event(), event()
        response = await pipeline.post({"events": [a, b, a]}, batch=True)
        assert response.json() == {"accepted": 2, "duplicates": 1, "late": 0, "rejected": []}
        again = await pipeline.post({"events": [b, event()]}, batch=True)
        assert again.json() == {"accepted": 1, "duplicates": 1, "late": 0, "rejected": []}
        assert len(await pipeline.messages()) == 3


class TestBatch:
    async def test_partial_acceptance_lists_rejected_items_by_index(
        self, pipeline: Pipeline
    ) -> None:
        events = [
            event(),
            event(properties={"price": 1}),
            event(event="nope"),
            event(user_id="$where"),
            event(properties={"sku": "s", "price": "NaN"}),
        ]
        response = await pipeline.post({"events": events}, batch=True)
        assert response.status_code == 202
        body = response.json()
        assert (body["accepted"], body["duplicates"]) == (1, 0)
        assert [(r["index"], r["error"]) for r in body["rejected"]] == [
            (1, "InvalidEvent"),
            (2, "UnknownEvent"),
            (3, "InvalidEvent"),
            (4, "InvalidEvent"),
        ]
        assert body["rejected"][0]["fields"][0]["loc"] == ["properties", "sku"]
        assert body["rejected"][3]["fields"][0]["loc"] == ["properties", "price"]
        assert len(await pipeline.messages()) == 1

    async def test_batch_items_without_event_id_get_webhook_id_and_index(
        self, pipeline: Pipeline
    ) -> None:
        events = [event(), event()]
        for e in events:
            del e["event_id"]
        await pipeline.post({"events": events}, batch=True, webhook_id="msg_b")
        ids = sorted(m.event_id for m in await pipeline.messages())
        assert ids == ["msg_b:0", "msg_b:1"]

    async def test_all_items_rejected_is_still_202(self, pipeline: Pipeline) -> None:
        response = await pipeline.post({"events": [event(event="nope")]}, batch=True)
        assert response.status_code == 202
        assert response.json()["accepted"] == 0

    @pytest.mark.parametrize(
        "body", [[{"event": "x"}], {"events": []}, {"events": {}}, {"events": [], "x": 1}, "x"]
    )
    async def test_body_that_is_not_an_events_list_is_invalid_batch(
        self, pipeline: Pipeline, body: Any
    ) -> None:
        assert_error(await pipeline.post(body, batch=True), 422, "InvalidBatch")

    async def test_more_than_2500_events_is_413(self, pipeline: Pipeline) -> None:
        tiny = {"event": "a", "user_id": "u", "properties": {}}
        response = await pipeline.post({"events": [tiny] * 2501}, batch=True)
        assert_error(response, 413, "PayloadTooLarge")

    async def test_one_event_over_32kb_is_413_naming_it(self, pipeline: Pipeline) -> None:
        big = event(properties={"sku": "x" * 33_000})
        response = await pipeline.post({"events": [event(), big]}, batch=True)
        body = assert_error(response, 413, "PayloadTooLarge")
        assert "events[1]" in body["detail"]
        assert await pipeline.messages() == []

    async def test_batch_over_500kb_is_413(self, pipeline: Pipeline) -> None:
        events = [event(properties={"sku": "x" * 20_000}) for _ in range(30)]
        assert_error(await pipeline.post({"events": events}, batch=True), 413, "PayloadTooLarge")


class TestRejections:
    async def test_wrong_content_type_is_415(self, pipeline: Pipeline) -> None:
        response = await pipeline.post(event(), headers={"content-type": "text/plain"})
        assert_error(response, 415, "UnsupportedMediaType")

    async def test_non_utf8_charset_is_415(self, pipeline: Pipeline) -> None:
        headers = {"content-type": "application/json; charset=latin-1"}
        assert_error(await pipeline.post(event(), headers=headers), 415, "UnsupportedMediaType")

    async def test_single_body_over_32kb_is_413(self, pipeline: Pipeline) -> None:
        response = await pipeline.post(event(properties={"sku": "x" * 33_000}))
        assert_error(response, 413, "PayloadTooLarge")

    async def test_streamed_body_without_content_length_is_refused_and_cut_off(
        self, pipeline: Pipeline
    ) -> None:
        # The process-wide limit (app/core/limits.py) counts a body as it streams in:
        # past it the route never runs; up to 4x the limit is read through (so a client
        # can read the 413), beyond that the stream is no longer pulled.
        limit = pipeline.ingest.settings.max_body_bytes
        chunk = 8192
        sent: list[int] = []

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(6 * limit // chunk):  # six times the limit
                sent.append(1)
                yield b" " * chunk

        _, headers = signed(pipeline.secrets.current, None, raw=b"{}")
        response = await pipeline.ingest.client.post(
            pipeline.path, content=chunks(), headers=headers
        )
        assert_error(response, 413, "PayloadTooLarge")
        assert len(sent) * chunk <= 4 * limit + 2 * chunk

    async def test_lying_content_length_does_not_raise_the_limit(self, pipeline: Pipeline) -> None:
        raw = json.dumps(event(properties={"sku": "x" * 40_000})).encode()
        _, headers = signed(pipeline.secrets.current, None, raw=raw)
        response = await pipeline.ingest.client.post(
            pipeline.path, content=raw, headers={**headers, "content-length": "100"}
        )
        assert_error(response, 413, "PayloadTooLarge")

    @pytest.mark.parametrize(
        ("project", "pipeline_part"),
        [("$where", None), ("..", None), ("a" * 65, None), (None, "not-an-id"), (None, "A" * 24)],
    )
    async def test_malformed_ids_are_404(
        self, pipeline: Pipeline, project: str | None, pipeline_part: str | None
    ) -> None:
        body, headers = signed(pipeline.secrets.current, event())
        path = f"/ingest/{project or pipeline.project_id}/{pipeline_part or pipeline.pipeline_id}"
        response = await pipeline.ingest.client.post(path, content=body, headers=headers)
        assert response.status_code == 404

    async def test_project_without_deployment_is_404(self, pipeline: Pipeline) -> None:
        body, headers = signed(pipeline.secrets.current, event())
        path = f"/ingest/{unique('nodeploy')}/{pipeline.pipeline_id}"
        response = await pipeline.ingest.client.post(path, content=body, headers=headers)
        assert_error(response, 404, "PipelineNotFound")

    async def test_pipeline_not_in_the_deployed_config_is_404(self, pipeline: Pipeline) -> None:
        body, headers = signed(pipeline.secrets.current, event())
        path = f"/ingest/{pipeline.project_id}/{pipeline_id()}"
        response = await pipeline.ingest.client.post(path, content=body, headers=headers)
        assert_error(response, 404, "PipelineNotFound")

    async def test_inactive_pipeline_is_409(self, ingest: IngestApp) -> None:
        inactive = await deploy_pipeline(ingest, unique("shop"), status="inactive")
        assert_error(await inactive.post(event()), 409, "PipelineInactive")

    async def test_malformed_json_is_422(self, pipeline: Pipeline) -> None:
        response = await pipeline.post(raw=b'{"event": "add_to_cart",')
        assert_error(response, 422, "MalformedJSON")

    async def test_nan_is_malformed_json(self, pipeline: Pipeline) -> None:
        raw = b'{"event":"add_to_cart","user_id":"u","properties":{"sku":"s","price":NaN}}'
        assert_error(await pipeline.post(raw=raw), 422, "MalformedJSON")

    async def test_wrong_property_type_is_422_with_field_path(self, pipeline: Pipeline) -> None:
        response = await pipeline.post(event(properties={"sku": "s", "price": "9.5"}))
        body = assert_error(response, 422, "InvalidEvent")
        assert body["fields"][0]["loc"] == ["properties", "price"]

    async def test_hostile_user_id_is_422(self, pipeline: Pipeline) -> None:
        body = assert_error(await pipeline.post(event(user_id="../x")), 422, "InvalidEvent")
        assert body["fields"][0]["loc"] == ["user_id"]

    async def test_unknown_event_is_422(self, pipeline: Pipeline) -> None:
        assert_error(await pipeline.post(event(event="refund")), 422, "UnknownEvent")

    async def test_disabled_event_is_422(self, pipeline: Pipeline) -> None:
        assert_error(await pipeline.post(event(event="old_event")), 422, "UnknownEvent")

    async def test_event_ten_minutes_ahead_is_422(self, pipeline: Pipeline) -> None:
        ahead = int(time.time() * 1000) + 600_000
        assert_error(await pipeline.post(event(timestamp=ahead)), 422, "EventInFuture")

    async def test_rejected_events_never_reach_kafka(self, pipeline: Pipeline) -> None:
        await pipeline.post(event(event="refund"))
        await pipeline.post(event(properties={}))
        await pipeline.post(raw=b"[1,")
        assert await pipeline.messages() == []


class TestSignatures:
    async def test_missing_signature_is_401_naming_the_header(self, pipeline: Pipeline) -> None:
        body = json.dumps(event()).encode()
        response = await pipeline.ingest.client.post(
            pipeline.path, content=body, headers={"content-type": "application/json"}
        )
        body_json = assert_error(response, 401, "InvalidSignature")
        assert "webhook-id" in body_json["detail"]
        assert "www-authenticate" not in response.headers

    async def test_wrong_secret_is_401(self, pipeline: Pipeline) -> None:
        response = await pipeline.post(event(), secret=new_secrets().current)
        body = assert_error(response, 401, "InvalidSignature")
        assert "does not match" in body["detail"]

    async def test_timestamp_outside_tolerance_is_401(self, pipeline: Pipeline) -> None:
        response = await pipeline.post(event(), timestamp_s=int(time.time()) - 400)
        body = assert_error(response, 401, "InvalidSignature")
        assert "old" in body["detail"]

    async def test_previous_secret_is_accepted_during_grace(self, ingest: IngestApp) -> None:
        old = new_secrets().current
        rotated = new_secrets(previous=old, previous_expires_in_s=3600)
        pipe = await deploy_pipeline(ingest, unique("shop"), secrets=rotated)
        assert (await pipe.post(event(), secret=old)).status_code == 202
        assert (await pipe.post(event())).status_code == 202

    async def test_expired_previous_secret_is_401(self, ingest: IngestApp) -> None:
        old = new_secrets().current
        rotated = new_secrets(previous=old, previous_expires_in_s=-60)
        pipe = await deploy_pipeline(ingest, unique("shop"), secrets=rotated)
        body = assert_error(await pipe.post(event(), secret=old), 401, "InvalidSignature")
        assert "expired" in body["detail"]

    async def test_replayed_webhook_id_is_409(self, pipeline: Pipeline) -> None:
        payload = event()
        first = await pipeline.post(payload, webhook_id="msg_replay")
        assert first.status_code == 202
        replay = await pipeline.post(payload, webhook_id="msg_replay")
        assert_error(replay, 409, "ReplayedWebhook")
        assert len(await pipeline.messages()) == 1

    async def test_refused_delivery_can_be_retried_with_its_webhook_id(
        self, pipeline: Pipeline
    ) -> None:
        bad = await pipeline.post(event(event="refund"), webhook_id="msg_retry")
        assert_error(bad, 422, "UnknownEvent")
        retry = await pipeline.post(event(event="refund"), webhook_id="msg_retry")
        assert_error(retry, 422, "UnknownEvent")  # not ReplayedWebhook: the claim was released


class TestRateLimits:
    async def test_exhausted_limit_is_429_with_retry_after(self, ingest: IngestApp) -> None:
        pipe = await deploy_pipeline(ingest, ingest.limited_projects[0])
        statuses = [(await pipe.post(event())).status_code for _ in range(3)]
        assert statuses == [202, 202, 202]
        response = await pipe.post(event())
        assert_error(response, 429, "RateLimited")
        assert int(response.headers["retry-after"]) >= 1
        assert len(await pipe.messages()) == 3

    async def test_batch_costs_its_event_count(self, ingest: IngestApp) -> None:
        pipe = await deploy_pipeline(ingest, ingest.limited_projects[1])
        ok = await pipe.post({"events": [event(), event()]}, batch=True)
        assert ok.status_code == 202
        refused = await pipe.post({"events": [event(), event()]}, batch=True)
        assert_error(refused, 429, "RateLimited")

    async def test_batch_larger_than_the_limit_says_so(self, ingest: IngestApp) -> None:
        pipe = await deploy_pipeline(ingest, ingest.limited_projects[2])
        response = await pipe.post({"events": [event() for _ in range(4)]}, batch=True)
        body = assert_error(response, 429, "RateLimited")
        assert "smaller batches" in body["detail"]

    async def test_pipelines_of_one_project_share_its_limit(self, ingest: IngestApp) -> None:
        first, second = await deploy_pipelines(
            ingest, ingest.limited_projects[3], ["active", "active"]
        )
        three = {"events": [event(), event(), event()]}
        assert (await first.post(three, batch=True)).status_code == 202
        assert_error(await second.post(event()), 429, "RateLimited")


class TestUnknownPropertiesSetting:
    async def test_drop_policy_removes_unknown_properties(self) -> None:
        settings = ingestion_settings(unknown_properties="drop")
        async for app, client in running(settings):
            ingest = IngestApp(app, client, settings, [])
            pipe = await deploy_pipeline(ingest, unique("shop"))
            response = await pipe.post(event(properties={"sku": "s", "extra": 1}))
            assert response.status_code == 202
            [message] = await pipe.messages()
            assert message.properties == {"sku": "s"}


class TestMetrics:
    @staticmethod
    async def samples(ingest: IngestApp) -> dict[str, float]:
        text = (await ingest.client.get("/metrics")).text
        return {
            line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line and not line.startswith("#")
        }

    async def test_metrics_count_each_outcome(self, ingest: IngestApp) -> None:
        # The app (and its counters) serves the whole module: compare against before.
        before = await self.samples(ingest)
        pipe = await deploy_pipeline(ingest, unique("shop"))
        payload = event()
        await pipe.post(payload)
        await pipe.post(payload)
        await pipe.post(event(event="refund"))
        await pipe.post({"events": [event(), event(user_id="$x")]}, batch=True)
        limited = await deploy_pipeline(ingest, ingest.limited_projects[4])
        await limited.post({"events": [event() for _ in range(4)]}, batch=True)
        after = await self.samples(ingest)
        grown = {name: value - before.get(name, 0.0) for name, value in after.items()}
        assert grown["ingest_events_accepted_total"] == 2
        assert grown["ingest_events_deduplicated_total"] == 1
        assert grown['ingest_requests_rejected_total{reason="UnknownEvent"}'] == 1
        assert grown['ingest_batch_events_rejected_total{reason="InvalidEvent"}'] == 1
        assert grown['ingest_requests_rate_limited_total{scope="pipeline"}'] == 1
        assert grown["ingest_produce_seconds_count"] == 2


async def test_openapi_documents_both_routes_and_their_bodies(ingest: IngestApp) -> None:
    spec = (await ingest.client.get("/openapi.json")).json()
    single = spec["paths"]["/ingest/{project_id}/{pipeline_id}"]["post"]
    batch = spec["paths"]["/ingest/{project_id}/{pipeline_id}/batch"]["post"]
    assert "user_id" in json.dumps(single["requestBody"])
    assert "events" in json.dumps(batch["requestBody"])
    assert {"401", "404", "409", "413", "415", "422", "429", "503"} <= set(single["responses"])
