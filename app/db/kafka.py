"""The event log on Kafka (aiokafka).

Producer: idempotent, `acks="all"`, so an acknowledged record is on every in-sync
replica and retries never duplicate it inside the log. Records are keyed
`{project_id}:{user_id}`; aiokafka's default partitioner (murmur2, like the Java
client) maps a key to the same partition from any process.

Failure policy: nothing waits on a dead broker for long. `start()` tries a few times
(about `_START_ATTEMPTS` x `_REQUEST_TIMEOUT_MS` at worst, instantly when the port is
closed) and then raises EventLogUnavailable; `produce_many` raises it when the batch is
not acknowledged within about twice the request timeout. The caller (ingestion)
answers 503 and the storefront retries.

Consumer: one member of a consumer group, no auto-commit (commit after your own
write: at-least-once), starting from the earliest record when the group has no
committed offset.

Takeover and new partitions (issue 10): with Kafka's defaults a killed compute's
partitions waited 10-15 s (session timeout 10 s, heartbeats every 3 s) and partitions
added to the topic were read only after the 5-minute metadata refresh. Both are settings
now (KAFKA_SESSION_TIMEOUT_MS 6 s, KAFKA_HEARTBEAT_INTERVAL_MS 1 s,
KAFKA_METADATA_MAX_AGE_MS 15 s; reasoning beside them in app/core/settings.py): a
killed member's partitions move in about the session timeout. Static membership
(KAFKA_GROUP_INSTANCE_ID) is optional: it spares the group a rebalance when a compute
restarts quickly, but it does not make a dead member's takeover faster.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    InvalidProducerEpoch,
    KafkaError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    TopicAlreadyExistsError,
    UnknownProducerId,
    for_code,
)

from app.core.settings import KAFKA_DEFAULT_PARTITIONS, BackendSettings
from app.db.event_log import EventLogConsumer, EventLogProducer, EventLogUnavailable, LogRecord

logger = logging.getLogger(__name__)

DEFAULT_PARTITIONS = KAFKA_DEFAULT_PARTITIONS
_REQUEST_TIMEOUT_MS = 5000
# How long the coordinator waits for the live members to rejoin during a rebalance. Not
# the (now short) session timeout, aiokafka's default: a member busy storing a batch
# rejoins after it, and dropping it for that would only cause another rebalance. At most
# the consumer's request timeout, which the JoinGroup request waits under. A dead member
# is already out of the group, so this does not delay a takeover.
_REBALANCE_TIMEOUT_MS = 2 * _REQUEST_TIMEOUT_MS
# No linger: the producer keeps one produce request in flight per broker, and the records
# that arrive meanwhile go in the next one, so under load they share requests anyway; a
# linger only added its wait to every answer (ingestion's produce at 32 concurrent
# requests: 11 -> 7.6 ms, no more CPU per event).
_LINGER_MS = 0
# A broker that takes longer than this to accept a connection counts as down.
_REACHABLE_WITHIN_S = 1.0
_START_ATTEMPTS = 3
_START_BACKOFF_S = 0.5
# Production clusters replicate 3 ways; a smaller (dev/test) cluster gets what it has.
_MAX_REPLICATION = 3

_T = TypeVar("_T")
_FAILURES = (KafkaError, OSError, TimeoutError)
# Errors after which an idempotent producer's sequence state is lost for good.
_FATAL_TO_IDEMPOTENCE = (
    OutOfOrderSequenceNumber,
    UnknownProducerId,
    InvalidProducerEpoch,
    ProducerFenced,
)


async def ensure_topic(settings: BackendSettings, partitions: int | None = None) -> None:
    """Creates `settings.kafka_topic` with `partitions` partitions (default
    `settings.kafka_partitions`; replication min(3, brokers)) unless it exists; an
    existing topic is left as it is.

    Raises EventLogUnavailable when the cluster cannot be reached or refuses."""
    partitions = partitions or settings.kafka_partitions
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=_REQUEST_TIMEOUT_MS
    )
    try:
        async with asyncio.timeout(2 * _REQUEST_TIMEOUT_MS / 1000):
            await admin.start()
            brokers = (await admin.describe_cluster())["brokers"]
            replication = max(1, min(_MAX_REPLICATION, len(brokers)))
            response = await admin.create_topics(
                [NewTopic(settings.kafka_topic, partitions, replication)]
            )
        for topic_error in response.to_object()["topic_errors"]:
            code = topic_error["error_code"]
            if code == 0:
                logger.info("created topic %s (%d partitions)", settings.kafka_topic, partitions)
                continue
            error = for_code(code)
            if error is not TopicAlreadyExistsError:
                raise EventLogUnavailable(
                    f"cannot create topic {settings.kafka_topic}: "
                    f"{error.__name__}: {topic_error['error_message']}"
                )
    except _FAILURES as exc:
        raise EventLogUnavailable(f"kafka at {settings.kafka_bootstrap}: {exc!r}") from exc
    finally:
        await admin.close()


async def _start_bounded(what: str, start: Callable[[], Awaitable[_T]]) -> _T:
    """Runs `start` up to `_START_ATTEMPTS` times; raises EventLogUnavailable after."""
    last: BaseException | None = None
    for attempt in range(1, _START_ATTEMPTS + 1):
        try:
            async with asyncio.timeout(3 * _REQUEST_TIMEOUT_MS / 1000):
                return await start()
        except (*_FAILURES, EventLogUnavailable) as exc:
            last = exc
            logger.warning("%s: start attempt %d failed: %r", what, attempt, exc)
        if attempt < _START_ATTEMPTS:
            await asyncio.sleep(_START_BACKOFF_S * attempt)
    raise EventLogUnavailable(f"{what}: cannot start after {_START_ATTEMPTS} attempts") from last


def _retrieve_exception(future: asyncio.Future[Any]) -> None:
    # A send we stopped waiting for may still fail later; retrieving its exception
    # keeps asyncio from logging "exception was never retrieved".
    if not future.cancelled():
        future.exception()


class KafkaEventProducer(EventLogProducer):
    """Durable, idempotent producer to `settings.kafka_topic`."""

    def __init__(self, settings: BackendSettings, partitions: int | None = None) -> None:
        self._settings = settings
        self._topic = settings.kafka_topic
        self._partitions = partitions or settings.kafka_partitions
        self._producer: AIOKafkaProducer | None = None
        self._broken = False
        self._start_lock = asyncio.Lock()

    async def start(self) -> None:
        """Ensures the topic and connects; idempotent. Raises EventLogUnavailable after a
        few failed attempts (a broker down at start never hangs the process)."""
        if self._producer is not None:  # every produce calls this: no lock when started
            return
        async with self._start_lock:
            if self._producer is None:
                self._producer = await _start_bounded(f"producer to {self._topic}", self._open)

    async def _open(self) -> AIOKafkaProducer:
        await ensure_topic(self._settings, self._partitions)
        producer = AIOKafkaProducer(
            bootstrap_servers=self._settings.kafka_bootstrap,
            enable_idempotence=True,
            acks="all",
            linger_ms=_LINGER_MS,
            # No compression: aiokafka 0.14 compresses lz4 through `cramjam` (not the `lz4`
            # package), which is not a dependency; adding it means producers AND
            # consumers need it.
            compression_type=None,
            request_timeout_ms=_REQUEST_TIMEOUT_MS,
            metadata_max_age_ms=self._settings.kafka_metadata_max_age_ms,
        )
        try:
            await producer.start()
        except BaseException:
            await producer.stop()
            raise
        return producer

    async def stop(self) -> None:
        """Flushes what is in flight and disconnects; idempotent."""
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()

    async def ping(self) -> None:
        """Fetches the cluster metadata; raises EventLogUnavailable unless the broker
        answers and the topic exists."""
        await self.start()
        assert self._producer is not None
        try:
            async with asyncio.timeout(2 * _REQUEST_TIMEOUT_MS / 1000):
                metadata = await self._producer.client.fetch_all_metadata()
        except _FAILURES as exc:
            raise EventLogUnavailable(f"kafka metadata: {exc!r}") from exc
        if not metadata.partitions_for_topic(self._topic):
            raise EventLogUnavailable(f"topic {self._topic} does not exist")

    async def _replace_if_broken(self) -> None:
        """Drops a producer whose idempotence state is broken, so start() builds a new one.

        aiokafka's idempotent producer does not recover from a lost sequence (e.g.
        OutOfOrderSequenceNumber after a broker restart): every later batch fails the
        same way, or its sender task ends and later sends wait forever. A fresh producer
        (new producer id) works again. Found by the ingestion broker-outage test."""
        producer = self._producer
        if producer is None:
            return
        sender = getattr(producer, "_sender", None)
        task = getattr(sender, "sender_task", None)
        if not self._broken and not (task is not None and task.done()):
            return
        self._producer, self._broken = None, False
        logger.warning("kafka producer lost its idempotence state; replacing it")
        with contextlib.suppress(Exception):
            async with asyncio.timeout(_REQUEST_TIMEOUT_MS / 1000):
                await producer.stop()

    @staticmethod
    async def _reachable(producer: AIOKafkaProducer) -> bool:
        """Returns whether some broker of the cluster has (or at once gets) a connection.

        Fail fast: with every broker down, records handed to the producer were held and
        retried until the 10 s deadline, then the 503; and delivered later, after the
        client had been told to retry. A refused connection answers in milliseconds, so
        a stopped cluster is a 503 at once and nothing is held. An open connection costs
        nothing to check; a broker that accepts and then stalls still gets the deadline.
        """
        client = producer.client
        # The usual case, checked without a task: a connection is open (a shielded
        # ready() per broker and request was ~2% of ingestion's CPU per single event).
        if any(conn.connected() for conn in getattr(client, "_conns", {}).values()):
            return True
        for broker in client.cluster.brokers():
            try:
                # Shielded: cancelling aiokafka mid-connect could leave its connection
                # table half-updated; the connect itself gives up at the request timeout.
                ready = asyncio.shield(client.ready(broker.nodeId))
                if await asyncio.wait_for(ready, _REACHABLE_WITHIN_S):
                    return True
            except TimeoutError:
                continue
        return False

    async def produce_many(self, records: Sequence[tuple[bytes, bytes]]) -> None:
        """Sends every (key, value) and returns once all are acknowledged by all in-sync
        replicas. Raises EventLogUnavailable otherwise (some may still be stored)."""
        if not records:
            return
        await self._replace_if_broken()
        await self.start()
        assert self._producer is not None
        if not await self._reachable(self._producer):
            raise EventLogUnavailable("no kafka broker accepts connections")
        futures: list[asyncio.Future[Any]] = []
        try:
            # send() only appends to a batch (it waits when the buffer is full); the
            # futures resolve when the broker acknowledged the batch.
            for key, value in records:
                futures.append(await self._producer.send(self._topic, value=value, key=key))
            done, pending = await asyncio.wait(futures, timeout=2 * _REQUEST_TIMEOUT_MS / 1000)
        except _FAILURES as exc:
            for future in futures:
                future.add_done_callback(_retrieve_exception)
            raise EventLogUnavailable(f"kafka send failed: {exc!r}") from exc
        for future in pending:
            future.add_done_callback(_retrieve_exception)
        if pending:
            raise EventLogUnavailable(f"{len(pending)} of {len(records)} records not acknowledged")
        failed = [error for f in done if (error := f.exception()) is not None]
        if any(isinstance(e, _FATAL_TO_IDEMPOTENCE) for e in failed):
            self._broken = True
        if failed:
            raise EventLogUnavailable(
                f"{len(failed)} of {len(records)} records failed: {failed[0]!r}"
            ) from failed[0]


class KafkaEventConsumer(EventLogConsumer):
    """One member of consumer group `group_id` on `settings.kafka_topic`."""

    def __init__(self, settings: BackendSettings, group_id: str) -> None:
        self._settings = settings
        self._topic = settings.kafka_topic
        self._group_id = group_id
        self._consumer: AIOKafkaConsumer | None = None
        self._start_lock = asyncio.Lock()

    async def start(self) -> None:
        """Ensures the topic and joins the group (the partitions arrive with the first
        getmany); idempotent. Raises EventLogUnavailable after a few failed attempts."""
        async with self._start_lock:
            if self._consumer is None:
                self._consumer = await _start_bounded(
                    f"consumer {self._group_id} of {self._topic}", self._open
                )

    async def _open(self) -> AIOKafkaConsumer:
        # Without the topic, the subscription would wait for a metadata refresh
        # (5 minutes) after someone else creates it.
        await ensure_topic(self._settings)
        consumer = AIOKafkaConsumer(
            self._topic,
            bootstrap_servers=self._settings.kafka_bootstrap,
            group_id=self._group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            request_timeout_ms=2 * _REQUEST_TIMEOUT_MS,
            metadata_max_age_ms=self._settings.kafka_metadata_max_age_ms,
            session_timeout_ms=self._settings.kafka_session_timeout_ms,
            heartbeat_interval_ms=self._settings.kafka_heartbeat_interval_ms,
            rebalance_timeout_ms=_REBALANCE_TIMEOUT_MS,
            group_instance_id=self._settings.kafka_group_instance_id,
        )
        try:
            await consumer.start()
        except BaseException:
            await consumer.stop()
            raise
        return consumer

    async def stop(self) -> None:
        """Leaves the group (its partitions go to the other members) without committing."""
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()

    async def _started(self) -> AIOKafkaConsumer:
        await self.start()
        assert self._consumer is not None
        return self._consumer

    async def getmany(self, max_records: int, timeout_ms: int) -> list[LogRecord]:
        """Returns up to max_records records from the group's position, in offset order
        within each partition; raises EventLogUnavailable."""
        consumer = await self._started()
        try:
            batches = await consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
        except KafkaError as exc:
            raise EventLogUnavailable(f"kafka fetch failed: {exc!r}") from exc
        return [
            LogRecord(
                partition=tp.partition,
                offset=message.offset,
                key=message.key or b"",
                value=message.value or b"",
                timestamp_ms=message.timestamp,
            )
            for tp, messages in batches.items()
            for message in messages
        ]

    async def commit(self, next_offsets: Mapping[int, int]) -> None:
        """Commits the next offset to read per partition; raises EventLogUnavailable (also
        when a rebalance took the partition away: its records will be redelivered)."""
        if not next_offsets:
            return
        consumer = await self._started()
        offsets = {TopicPartition(self._topic, p): o for p, o in next_offsets.items()}
        try:
            await consumer.commit(offsets)
        except KafkaError as exc:
            raise EventLogUnavailable(f"kafka commit failed: {exc!r}") from exc

    async def end_offsets(self) -> dict[int, int]:
        """As `EventLogConsumer.end_offsets`; raises EventLogUnavailable."""
        consumer = await self._started()
        assigned = list(consumer.assignment())
        if not assigned:
            return {}
        try:
            ends = await consumer.end_offsets(assigned)
        except KafkaError as exc:
            raise EventLogUnavailable(f"kafka offsets failed: {exc!r}") from exc
        return {tp.partition: int(ends[tp]) for tp in assigned}

    async def lag(self) -> dict[int, int]:
        """Returns, per assigned partition, end offset minus position (empty before the
        group assigned anything); raises EventLogUnavailable."""
        ends = await self.end_offsets()
        consumer = await self._started()
        try:
            return {
                p: max(0, end - await consumer.position(TopicPartition(self._topic, p)))
                for p, end in ends.items()
            }
        except KafkaError as exc:
            raise EventLogUnavailable(f"kafka offsets failed: {exc!r}") from exc
