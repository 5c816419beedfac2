"""Event log contract: Kafka (real broker, a topic per test) and the local SQLite log.

Both promise: acknowledged ⇒ stored; per-key order inside one stable partition;
at-least-once delivery to a consumer group that commits after its own write.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from app.core.settings import BackendSettings
from app.db.event_log import EventLogConsumer, EventLogProducer, EventLogUnavailable, LogRecord
from app.db.factory import make_consumer, make_producer
from app.db.kafka import DEFAULT_PARTITIONS, ensure_topic
from app.db.local_log import LocalEventConsumer, LocalEventProducer, log_path, partition_for
from tests.conftest import unique

REPO_ROOT = Path(__file__).resolve().parents[2]
# Bounds that turn a hang into a failure; not timing assertions.
CONSUME_BOUND_S = 30.0
FAIL_FAST_BOUND_S = 20.0


class LogKit:
    """Builds started producers and consumers of one log, and stops them all."""

    def __init__(self, kind: str, settings: BackendSettings) -> None:
        self.kind = kind
        self.settings = settings.model_copy(update={"event_log": kind})
        self._opened: list[EventLogProducer | EventLogConsumer] = []

    async def producer(self) -> EventLogProducer:
        producer = make_producer(self.settings)
        self._opened.append(producer)
        await producer.start()
        return producer

    async def consumer(self, group: str) -> EventLogConsumer:
        consumer = make_consumer(self.settings, group)
        self._opened.append(consumer)
        await consumer.start()
        return consumer

    async def close(self) -> None:
        for item in reversed(self._opened):
            await item.stop()


@pytest.fixture(
    params=[
        pytest.param("kafka", id="kafka", marks=pytest.mark.kafka),
        pytest.param("local", id="local"),
    ]
)
async def log(
    request: pytest.FixtureRequest, backend_settings: BackendSettings
) -> AsyncIterator[LogKit]:
    kit = LogKit(request.param, backend_settings)
    try:
        yield kit
    finally:
        await kit.close()


def records_for(keys: list[str], per_key: int, tag: str = "") -> list[tuple[bytes, bytes]]:
    """per_key records for each key, interleaved; values say key and sequence number."""
    return [(key.encode(), f"{key}#{tag}{seq}".encode()) for seq in range(per_key) for key in keys]


async def consume(consumer: EventLogConsumer, count: int) -> list[LogRecord]:
    """At least `count` records (fails if they do not come)."""
    got: list[LogRecord] = []
    async with asyncio.timeout(CONSUME_BOUND_S):
        while len(got) < count:
            got.extend(await consumer.getmany(max_records=500, timeout_ms=500))
    return got


async def assert_nothing_more(consumer: EventLogConsumer) -> None:
    assert await consumer.getmany(max_records=500, timeout_ms=1500) == []


def next_offsets(records: list[LogRecord]) -> dict[int, int]:
    result: dict[int, int] = {}
    for record in records:
        result[record.partition] = max(result.get(record.partition, 0), record.offset + 1)
    return result


class TestProduceConsume:
    async def test_consumed_records_are_the_produced_ones(self, log: LogKit) -> None:
        produced = records_for([f"p1:u{i}" for i in range(10)], per_key=2)
        await (await log.producer()).produce_many(produced)
        consumed = await consume(await log.consumer(unique("g")), len(produced))
        assert sorted((r.key, r.value) for r in consumed) == sorted(produced)
        assert all(r.offset >= 0 and r.timestamp_ms > 0 for r in consumed)

    async def test_one_keys_records_keep_their_order_in_one_partition_across_producers(
        self, log: LogKit
    ) -> None:
        keys = [f"p1:u{i}" for i in range(6)]
        first, second = await log.producer(), await log.producer()
        await first.produce_many(records_for(keys, per_key=5, tag="a"))
        await second.produce_many(records_for(keys, per_key=5, tag="b"))
        for seq in range(3):
            await first.produce_many([(keys[0].encode(), f"{keys[0]}#c{seq}".encode())])
        consumed = await consume(await log.consumer(unique("g")), 6 * 10 + 3)

        by_key: dict[bytes, list[LogRecord]] = defaultdict(list)
        for record in consumed:
            by_key[record.key].append(record)
        for key, records in by_key.items():
            assert len({r.partition for r in records}) == 1, key
            offsets = [r.offset for r in records]
            assert offsets == sorted(offsets)
            expected = [f"{key.decode()}#a{s}" for s in range(5)]
            expected += [f"{key.decode()}#b{s}" for s in range(5)]
            if key == keys[0].encode():
                expected += [f"{key.decode()}#c{s}" for s in range(3)]
            assert [r.value.decode() for r in records] == expected

    async def test_max_records_caps_one_getmany(self, log: LogKit) -> None:
        await (await log.producer()).produce_many(records_for(["p1:u1", "p1:u2"], per_key=10))
        consumer = await log.consumer(unique("g"))
        first: list[LogRecord] = []
        async with asyncio.timeout(CONSUME_BOUND_S):
            while not first:
                first = await consumer.getmany(max_records=3, timeout_ms=500)
        assert len(first) <= 3
        rest = await consume(consumer, 20 - len(first))
        assert len(first) + len(rest) == 20

    async def test_producing_nothing_is_a_no_op(self, log: LogKit) -> None:
        producer = await log.producer()
        await producer.produce_many([])
        await producer.ping()


class TestConsumerGroups:
    async def test_a_new_consumer_resumes_after_the_groups_commit(self, log: LogKit) -> None:
        producer, group = await log.producer(), unique("g")
        await producer.produce_many(records_for([f"p1:u{i}" for i in range(5)], per_key=2))
        first = await log.consumer(group)
        consumed = await consume(first, 10)
        await first.commit(next_offsets(consumed))
        await first.stop()

        later = records_for(["p1:u1", "p1:u9"], per_key=2, tag="later")
        await producer.produce_many(later)
        second = await log.consumer(group)
        resumed = await consume(second, len(later))
        assert sorted((r.key, r.value) for r in resumed) == sorted(later)
        await assert_nothing_more(second)

    async def test_uncommitted_records_are_redelivered_to_the_next_consumer(
        self, log: LogKit
    ) -> None:
        producer, group = await log.producer(), unique("g")
        await producer.produce_many(records_for([f"p1:u{i}" for i in range(8)], per_key=3))
        first = await log.consumer(group)
        consumed = await consume(first, 24)
        # Commit only past the first record of each partition: the rest was "not
        # written yet" when this consumer died.
        first_offsets = {
            p: min(r.offset for r in consumed if r.partition == p)
            for p in {r.partition for r in consumed}
        }
        await first.commit({p: o + 1 for p, o in first_offsets.items()})
        await first.stop()

        expected = {
            (r.partition, r.offset, r.value)
            for r in consumed
            if r.offset != first_offsets[r.partition]
        }
        second = await log.consumer(group)
        redelivered = await consume(second, len(expected))
        assert {(r.partition, r.offset, r.value) for r in redelivered} == expected
        await assert_nothing_more(second)

    async def test_another_group_reads_everything_regardless_of_commits(self, log: LogKit) -> None:
        await (await log.producer()).produce_many(records_for(["p1:u1", "p1:u2"], per_key=3))
        first = await log.consumer(unique("g"))
        await first.commit(next_offsets(await consume(first, 6)))
        other = await consume(await log.consumer(unique("g")), 6)
        assert len(other) == 6

    async def test_lag_counts_records_not_yet_consumed(self, log: LogKit) -> None:
        producer = await log.producer()
        await producer.produce_many(records_for(["p1:u1", "p1:u2", "p1:u3"], per_key=2))
        consumer = await log.consumer(unique("g"))
        await consume(consumer, 6)
        assert sum((await consumer.lag()).values()) == 0
        await producer.produce_many(records_for(["p1:u1", "p1:u4"], per_key=2, tag="x"))
        assert sum((await consumer.lag()).values()) == 4


class TestUnavailable:
    @staticmethod
    def unreachable(log: LogKit, tmp_path: Path) -> BackendSettings:
        if log.kind == "kafka":
            # Port 1 on loopback: nothing listens there, connections are refused.
            return log.settings.model_copy(update={"kafka_bootstrap": "127.0.0.1:1"})
        blocker = tmp_path / "not-a-directory"
        blocker.write_text("a file where the data directory should be")
        return log.settings.model_copy(update={"data_dir": blocker / "data"})

    async def test_start_and_produce_raise_event_log_unavailable(
        self, log: LogKit, tmp_path: Path
    ) -> None:
        producer = make_producer(self.unreachable(log, tmp_path))
        try:
            async with asyncio.timeout(FAIL_FAST_BOUND_S):
                with pytest.raises(EventLogUnavailable):
                    await producer.start()
                with pytest.raises(EventLogUnavailable):
                    await producer.produce_many([(b"p1:u1", b"v")])
                with pytest.raises(EventLogUnavailable):
                    await producer.ping()
        finally:
            await producer.stop()


class TestKafkaTopic:
    @pytest.mark.kafka
    async def test_ensure_topic_creates_the_partitions_and_tolerates_an_existing_topic(
        self, backend_settings: BackendSettings
    ) -> None:
        await ensure_topic(backend_settings, partitions=DEFAULT_PARTITIONS)
        await ensure_topic(backend_settings, partitions=3)
        admin = AIOKafkaAdminClient(bootstrap_servers=backend_settings.kafka_bootstrap)
        await admin.start()
        try:
            (topic,) = await admin.describe_topics([backend_settings.kafka_topic])
        finally:
            await admin.close()
        assert len(topic["partitions"]) == DEFAULT_PARTITIONS


_PRODUCE_THEN_HANG = """
import asyncio, sys
from pathlib import Path
from app.core.settings import BackendSettings
from app.db.local_log import LocalEventProducer

async def main() -> None:
    producer = LocalEventProducer(BackendSettings(data_dir=Path(sys.argv[1])))
    await producer.produce_many([(b"p1:u1", b"acked-1"), (b"p1:u2", b"acked-2")])
    print("acked", flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


class TestLocalLog:
    async def test_records_and_offsets_survive_reopening_the_file(
        self, backend_settings: BackendSettings
    ) -> None:
        producer = LocalEventProducer(backend_settings)
        await producer.produce_many(records_for(["p1:u1", "p1:u2"], per_key=2))
        await producer.stop()
        reopened = LocalEventProducer(backend_settings)
        await reopened.produce_many(records_for(["p1:u1"], per_key=1, tag="after"))
        await reopened.stop()

        consumer = LocalEventConsumer(backend_settings, unique("g"))
        try:
            records = await consume(consumer, 5)
        finally:
            await consumer.stop()
        u1 = [r for r in records if r.key == b"p1:u1"]
        assert [r.value for r in u1] == [b"p1:u1#0", b"p1:u1#1", b"p1:u1#after0"]
        assert [r.offset for r in u1] == sorted({r.offset for r in u1})

    async def test_acknowledged_records_survive_a_killed_process_in_the_same_partition(
        self, backend_settings: BackendSettings
    ) -> None:
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _PRODUCE_THEN_HANG,
            str(backend_settings.data_dir),
            cwd=REPO_ROOT,
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONHASHSEED": "random"},
        )
        try:
            assert child.stdout is not None
            line = await asyncio.wait_for(child.stdout.readline(), 30)
            assert line.strip() == b"acked"
        finally:
            child.kill()  # SIGKILL: no chance to flush or close anything
            await child.wait()

        producer = LocalEventProducer(backend_settings)
        await producer.produce_many([(b"p1:u1", b"parent")])
        await producer.stop()
        consumer = LocalEventConsumer(backend_settings, unique("g"))
        try:
            records = await consume(consumer, 3)
        finally:
            await consumer.stop()
        u1 = [r for r in records if r.key == b"p1:u1"]
        assert [r.value for r in u1] == [b"acked-1", b"parent"]
        assert {r.partition for r in u1} == {partition_for(b"p1:u1", 4)}
        assert b"acked-2" in {r.value for r in records}

    async def test_retention_trims_old_records_without_reusing_offsets(
        self, backend_settings: BackendSettings
    ) -> None:
        producer = LocalEventProducer(backend_settings, retention_ms=1)
        try:
            await producer.produce_many(records_for(["p1:u1"], per_key=3))
            await asyncio.sleep(0.05)
            assert await producer.trim() == 3
            await producer.produce_many([(b"p1:u1", b"fresh")])
        finally:
            await producer.stop()
        consumer = LocalEventConsumer(backend_settings, unique("g"))
        try:
            (record,) = await consume(consumer, 1)
            await assert_nothing_more(consumer)
        finally:
            await consumer.stop()
        assert (record.value, record.offset) == (b"fresh", 3)

    async def test_an_existing_file_keeps_its_partition_count(
        self, backend_settings: BackendSettings
    ) -> None:
        producer = LocalEventProducer(backend_settings, partitions=2)
        await producer.produce_many([(b"p1:u1", b"v")])
        await producer.stop()
        consumer = LocalEventConsumer(backend_settings, unique("g"), partitions=8)
        try:
            (record,) = await consume(consumer, 1)
            assert set((await consumer.lag()).keys()) == {0, 1}
        finally:
            await consumer.stop()
        assert record.partition == partition_for(b"p1:u1", 2)
        assert log_path(backend_settings).exists()
