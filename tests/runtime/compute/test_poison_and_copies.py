"""The compute worker on real Kafka: second copies of an event in the log count once,
and what can never be stored is parked in the dead-letter topic while the rest of the
stream flows and is committed."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from app.core.settings import BackendSettings
from app.db import factory
from app.db.online_store import OnlineStore, RecordRejected, RecordWrite, WriteConflict
from app.schemas.event import record_key
from app.tiles.record import serve
from runtime.compute.specs import build_specs
from tests.conftest import unique
from tests.factories import new_id
from tests.runtime.compute.harness import CATCH_UP_BOUND_S, ComputeKit, sample
from tests.runtime.compute.oracle import (
    RawEvent,
    assert_same_values,
    config,
    feature,
    message,
    oracle_values,
    pipeline,
)
from tests.support.online import DelegatingStore

pytestmark = [pytest.mark.kafka, pytest.mark.redis]

NOW = 1_767_225_600_000
MINUTE = 60_000


@pytest.fixture
async def kit(backend_settings: BackendSettings) -> AsyncIterator[ComputeKit]:
    settings = backend_settings.model_copy(
        update={"online_store": "redis", "kafka_dead_letter_topic": unique("dead")}
    )
    k = ComputeKit(settings, NOW)
    await k.start()
    try:
        yield k
    finally:
        await k.close()


class _RefusesOneUser(DelegatingStore):
    """A real store that refuses, for good, the records of one user: what Aerospike does
    with a record over its write-block size or a TTL its namespace forbids."""

    def __init__(self, inner: OnlineStore, project_id: str, user_id: str) -> None:
        super().__init__(inner)
        self._refused = (project_id, user_id)
        self.refusals = 0

    async def put(
        self,
        project_id: str,
        user_id: str,
        record: dict[str, Any],
        ttl_seconds: int,
        expected_generation: int | None,
    ) -> None:
        if (project_id, user_id) == self._refused:
            self.refusals += 1
            raise RecordRejected("record too big (test)")
        await super().put(project_id, user_id, record, ttl_seconds, expected_generation)

    async def put_many(
        self, project_id: str, writes: Sequence[RecordWrite], ttl_seconds: int
    ) -> list[WriteConflict | None]:
        if any((project_id, w.user_id) == self._refused for w in writes):
            raise RecordRejected("one record of the call is too big (test)")
        return await super().put_many(project_id, writes, ttl_seconds)


async def read_dead_letters(kit: ComputeKit, count: int) -> list[tuple[bytes, dict[str, Any]]]:
    settings = kit.settings.model_copy(update={"kafka_topic": kit.settings.kafka_dead_letter_topic})
    consumer = factory.make_consumer(settings, unique("dlq-reader"))
    await consumer.start()
    out: list[tuple[bytes, dict[str, Any]]] = []
    try:
        for _ in range(int(CATCH_UP_BOUND_S * 2)):
            out += [(r.key, json.loads(r.value)) for r in await consumer.getmany(100, 500)]
            if len(out) >= count:
                break
    finally:
        await consumer.stop()
    return out


class TestSecondCopiesInTheLog:
    async def test_an_event_produced_twice_counts_once_across_batches(self, kit: ComputeKit):
        project, p = unique("shop"), new_id()
        features = [
            feature("n", p, "COUNT", ["1h"]),
            feature("s", p, "SUM", ["1h"], field_name="price"),
        ]
        await kit.publish(config(project, 1, [pipeline(p, "add_to_cart")], features))
        raws = [RawEvent("u1", p, "add_to_cart", NOW - i, {"price": 1 + i}) for i in range(10)]
        messages = [message(project, raw, 1, n) for n, raw in enumerate(raws)]
        key = record_key(project, "u1")
        # What a broker outage or an ingestion crash leaves: every event twice, the second
        # copies later in the log (another batch for the worker).
        await kit.producer.produce_many([(key, m.encode()) for m in messages])
        running = kit.run()
        await running.wait_processed(10)
        await kit.producer.produce_many([(key, m.encode()) for m in messages[::-1]])
        await running.wait_processed(20)
        await running.stop()

        stored = await kit.store.get(project, "u1")
        assert stored is not None
        specs = build_specs(config(project, 1, [pipeline(p, "add_to_cart")], features))
        assert_same_values(
            serve(stored.record, specs.specs, NOW), oracle_values(features, raws, NOW)
        )
        assert sample(running.metrics, "compute_events_duplicate_id_total") == 10
        assert sample(running.metrics, "compute_events_applied_total") == 10


class TestPoisonIsParked:
    async def test_a_record_the_store_refuses_is_parked_and_the_other_users_flow(
        self, kit: ComputeKit
    ):
        project, p = unique("shop"), new_id()
        features = [feature("n", p, "COUNT", ["1h"])]
        await kit.publish(config(project, 1, [pipeline(p, "add_to_cart")], features))
        raws = [RawEvent(f"u{i % 4}", p, "add_to_cart", NOW - i) for i in range(40)]
        raws += [RawEvent("poison", p, "add_to_cart", NOW - i) for i in range(3)]
        await kit.produce(project, raws, version=1)
        store = _RefusesOneUser(kit.store, project, "poison")
        dead_letter = factory.make_dead_letter_producer(kit.settings)

        running = kit.run(store=store, dead_letter=dead_letter)
        await running.wait_processed(len(raws))
        await running.stop()
        await dead_letter.stop()

        assert store.refusals >= 1
        assert await kit.store.get(project, "poison") is None
        for user in ("u0", "u1", "u2", "u3"):
            stored = await kit.store.get(project, user)
            assert stored is not None
        assert sample(running.metrics, "compute_events_parked_total") == 3
        assert sample(running.metrics, "compute_events_applied_total") == 40
        assert sum((await kit.committed()).values()) == len(raws)  # nothing left behind
        parked = await read_dead_letters(kit, 3)
        assert len(parked) == 3
        assert {k for k, _ in parked} == {record_key(project, "poison")}
        for _, entry in parked:
            assert entry["reason"].startswith("RecordRejected: ")
            assert json.loads(entry["value"])["user_id"] == "poison"  # replayable as is

    async def test_a_record_that_is_not_an_event_is_parked_with_its_position(self, kit: ComputeKit):
        project, p = unique("shop"), new_id()
        await kit.publish(
            config(project, 1, [pipeline(p, "add_to_cart")], [feature("n", p, "COUNT", ["1h"])])
        )
        await kit.produce_raw(f"{project}:u1".encode(), b"\xff{not an event")
        await kit.produce(project, [RawEvent("u1", p, "add_to_cart", NOW - 5)], version=1)
        dead_letter = factory.make_dead_letter_producer(kit.settings)

        running = kit.run(dead_letter=dead_letter)
        await running.wait_processed(2)
        await running.stop()
        await dead_letter.stop()

        [(_, entry)] = await read_dead_letters(kit, 1)
        assert entry["reason"] == "NotAnEventMessage"
        assert "value" not in entry  # not UTF-8: kept byte for byte
        assert entry["value_b64"] == "/3tub3QgYW4gZXZlbnQ="
        assert sample(running.metrics, "compute_events_applied_total") == 1
