"""Compute benchmark (not a test): throughput against raw Kafka, and bytes per user.

    .venv/bin/python bench/compute_bench.py [--events 20000] [--users 1000]
        [--mix recommender|basic] [--features 50] [--rounds 2] [--skip-size]

Needs the servers of `scripts/servers.sh start` (loopback Kafka and Redis; addresses
from KAFKA_BOOTSTRAP / REDIS_URL). Bounded: one topic of `--events` events, one
Redis database's worth of user records, a few minutes at most.

1. Throughput. The feature config is the serving benchmark's (`--features` features x
   5 windows, 5m 1h 24h 7d 30d; `--mix recommender`, the default: all eleven
   aggregations, every other feature filtered on the price; `basic`: the eight basic
   ones). One topic of 2 partitions holds `--events` events of `--users` users. It is
   read, each time by a fresh consumer group, by:
   - a bare aiokafka consumer that only counts records (the ceiling: raw consume);
   - one compute worker process (decode, config lookup, read-apply-write per user on
     the Redis online store, commit after the store);
   - two compute worker processes in one group (one partition each).
   Every rate runs from the first record fetched to the last one committed (the raw
   consumer: counted), so joining the group is not in it; workers start fetching once
   the group gave each its partitions. The user records are
   deleted before each worker run, so every run applies every event. `--rounds`
   repeats raw, 1 worker, 2 workers in turn (A/B alternated on a loaded machine).
   Printed: events/s of each and worker / raw, with the workers' process CPU time per
   event (the steadier figure on a shared machine). Then two ceilings without I/O, in
   this process (`in_memory`), as ratios of the same raw consume: the tile code alone,
   and the worker's pure steps (event decode, the batch's records decoded, applied and
   encoded), which is what Python allows whatever Kafka and the store do.
2. Bytes per user: one user, 20 features x 5 windows (5m 1h 24h 7d 30d), events
   arriving every ~5 minutes of event time (so the 30d window fills after ~8,600
   events), applied in batches of 100 through the writer into Redis. Printed after
   10 ... 40,000 events: the stored record (`HSTRLEN` of its fields) and Redis' own `MEMORY USAGE`.
   Tiles outside every window are pruned on write, so the size stops growing once
   the longest window is full.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

# Run as a script (`make bench`): the repository root is not on sys.path by itself.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient

from app.core.config_loader import ConfigLoader, publish_config
from app.core.settings import BackendSettings
from app.db import factory
from app.db.event_log import EventLogConsumer, LogRecord
from app.db.kafka import KafkaEventConsumer, ensure_topic
from app.db.redis_online import record_key
from app.schemas.deployment import ConfigSnapshot
from app.schemas.event import EventMessage
from app.schemas.event import record_key as kafka_key
from app.tiles.codec import EncodedRecord, decode_record, encode_record
from app.tiles.record import AppliedEvent, BatchApplier
from bench.common import EVENT_NAMES, feature_snapshot
from runtime.compute.metrics import ComputeMetrics
from runtime.compute.specs import ProjectSpecs, build_specs, event_key
from runtime.compute.worker import (
    ComputeWorker,
    WorkerOptions,
    freeze_long_lived_objects,
    wall_clock_ms,
)
from runtime.compute.writer import FeatureWriter

SIZE_CHECKPOINTS = [10, 100, 1_000, 10_000, 20_000, 40_000]
RUN_BOUND_S = 1800.0
PARTITIONS = 2
# The serving benchmark's windows (bench/serving_bench.py).
WINDOWS = ["5m", "1h", "24h", "7d", "30d"]
SCRIPT = str(Path(__file__).resolve())


def _id() -> str:
    return uuid.uuid4().hex[:24]


def snapshot(
    project_id: str, pipeline_id: str, features: int, windows: list[str], recommender: bool
) -> ConfigSnapshot:
    return feature_snapshot(
        project_id, pipeline_id, features, windows, pipeline_name="bench", recommender=recommender
    )


def properties(rng: random.Random) -> dict[str, Any]:
    return {"product_id": f"sku-{rng.randrange(1000)}", "price": rng.randrange(100, 20_000) / 100}


def bench_settings(topic: str, data_dir: Path) -> BackendSettings:
    return BackendSettings(
        event_log="kafka",
        online_store="redis",
        cache="redis",
        config_store="sqlite",
        kafka_bootstrap=os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:39092"),
        redis_url=os.environ.get("REDIS_URL", "redis://127.0.0.1:36379/0"),
        kafka_topic=topic,
        data_dir=data_dir,
    )


def messages(project: str, pipeline: str, n: int, users: int) -> list[tuple[bytes, bytes]]:
    """Returns the topic's records (key, value): `n` events of `users` users, event times
    spread over the last hour, the same for a given n and users."""
    rng = random.Random(1)
    now = wall_clock_ms()
    out = []
    for i in range(n):
        user = f"user-{rng.randrange(users)}"
        message = EventMessage(
            project_id=project,
            pipeline_id=pipeline,
            event=rng.choice(EVENT_NAMES),
            user_id=user,
            event_id=f"e{i}",
            event_time_ms=now - rng.randrange(0, 3_600_000),
            received_at_ms=now,
            version=1,
            properties=properties(rng),
        )
        out.append((kafka_key(project, user), message.encode()))
    return out


async def produce(settings: BackendSettings, records: list[tuple[bytes, bytes]]) -> None:
    producer = factory.make_producer(settings)
    await producer.start()
    try:
        for start in range(0, len(records), 2_000):
            await producer.produce_many(records[start : start + 2_000])
    finally:
        await producer.stop()


def in_memory(specs: ProjectSpecs, records: list[tuple[bytes, bytes]]) -> tuple[float, float]:
    """Returns the process CPU seconds two in-memory runs over `records` take, in
    batches of the worker's size, one partition: (the tile code alone: events already
    decoded, records kept decoded; the worker's pure steps: each event message decoded,
    each user's record decoded, applied and encoded once a batch, as the writer does).
    No I/O: bounds of what this Python code allows whatever the stores and Kafka do.
    Run with the worker process's GC settings (`freeze_long_lived_objects`)."""
    batch = WorkerOptions().max_batch_messages
    batches = [records[start : start + batch] for start in range(0, len(records), batch)]
    now = wall_clock_ms()
    applier = BatchApplier(specs.by_event, now, keyed_events=specs.keyed_events)

    def grouped(offset: int, chunk: list[tuple[bytes, bytes]]) -> dict[str, list[AppliedEvent]]:
        by_user: dict[str, list[AppliedEvent]] = {}
        for at, (_, value) in enumerate(chunk, offset):
            m = EventMessage.decode(value)
            by_user.setdefault(m.user_id, []).append(
                AppliedEvent(
                    0,
                    at,
                    event_key(m.pipeline_id, m.event),
                    m.event_time_ms,
                    m.properties,
                    m.event_id,
                )
            )
        return by_user

    decoded = [grouped(i * batch, chunk) for i, chunk in enumerate(batches)]
    kept: dict[str, dict[str, Any]] = {}
    started = time.process_time()
    for by_user in decoded:
        for user, events in by_user.items():
            kept[user] = applier.apply(kept.get(user), events, now, owned=True).record
    tiles_only = time.process_time() - started
    del kept, decoded  # not alive (walked by the GC) in the second run

    stored: dict[str, EncodedRecord] = {}
    started = time.process_time()
    for i, chunk in enumerate(batches):
        # As the writer does: the batch's records decoded (and alive) together.
        by_user = grouped(i * batch, chunk)
        current = {u: decode_record(*stored[u]) if u in stored else None for u in by_user}
        applied = {u: applier.apply(current[u], e, now, owned=True) for u, e in by_user.items()}
        stored.update((u, encode_record(result.record)) for u, result in applied.items())
    return tiles_only, time.process_time() - started


async def raw_consume(settings: BackendSettings, n: int) -> float:
    """Seconds a bare aiokafka consumer (new group) takes from its first record to n."""
    consumer = AIOKafkaConsumer(
        settings.kafka_topic,
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=f"bench-raw-{_id()}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        seen = 0
        started = 0.0
        while seen < n:
            batches = await consumer.getmany(timeout_ms=200, max_records=2_000)
            got = sum(len(records) for records in batches.values())
            if got and not seen:
                started = time.perf_counter()
            seen += got
        return time.perf_counter() - started
    finally:
        await consumer.stop()


class _FirstFetch(EventLogConsumer):
    """The worker's consumer, noting (in files) the wall-clock time of its first record
    and the process CPU time from that record to each commit (`.cpu`).

    It fetches nothing until the group gave it its share of the partitions: a worker
    that started first would otherwise take every partition, and the rebalance when the
    next one joins would throw its batch away (a measure of start-up, not of compute)."""

    def __init__(self, inner: KafkaEventConsumer, mark: Path, share: int) -> None:
        self._inner = inner
        self._mark = mark
        self._marked = False
        self._share = share
        self._first_cpu = 0.0

    async def start(self) -> None:
        await self._inner.start()

    async def stop(self) -> None:
        await self._inner.stop()

    async def getmany(self, max_records: int, timeout_ms: int) -> list[LogRecord]:
        if not self._marked:
            consumer = await self._inner._started()
            if len(consumer.assignment()) != self._share:
                await asyncio.sleep(0.05)
                return []
        records = await self._inner.getmany(max_records, timeout_ms)
        if records and not self._marked:
            self._marked = True
            self._first_cpu = time.process_time()
            self._mark.write_text(repr(time.time()))
        return records

    async def commit(self, next_offsets: Any) -> None:
        await self._inner.commit(next_offsets)
        cpu = time.process_time() - self._first_cpu
        self._mark.with_suffix(".cpu").write_text(repr(cpu))

    async def lag(self) -> dict[int, int]:
        return await self._inner.lag()

    async def end_offsets(self) -> dict[int, int]:
        return await self._inner.end_offsets()


async def worker_child(topic: str, data_dir: Path, group: str, mark: Path, share: int) -> None:
    """One compute worker process (Redis online store) in `group`, until SIGTERM."""
    settings = bench_settings(topic, data_dir)
    cache = factory.make_cache(settings)
    config_store = factory.make_config_store(settings)
    store = factory.make_online_store(settings)
    for backend in (cache, config_store, store):
        await backend.initialize()
    loader = ConfigLoader(cache, config_store)
    await loader.start(preload=False)
    metrics = ComputeMetrics()
    writer = FeatureWriter(store, now_ms=wall_clock_ms, metrics=metrics)
    consumer = _FirstFetch(KafkaEventConsumer(settings, group), mark, share)
    worker = ComputeWorker(consumer, writer, loader, metrics=metrics, options=WorkerOptions())
    freeze_long_lived_objects()  # as compute_startup does for the process
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, worker.stop)
    try:
        await worker.run()
    finally:
        await loader.stop()
        for backend in (store, config_store, cache):
            await backend.close()


async def committed(admin: AIOKafkaAdminClient, group: str) -> int:
    """Returns the sum of the group's committed offsets (records done)."""
    offsets = await admin.list_consumer_group_offsets(group)
    return sum(max(meta.offset, 0) for meta in offsets.values())


async def workers_consume(
    settings: BackendSettings, n: int, workers: int, tmp: Path
) -> tuple[float, float]:
    """Returns the seconds `workers` compute worker processes (one new group) take from
    the first record any of them fetched to the commit of the n-th, and the CPU seconds
    they spent together from their first record to their last commit."""
    group = f"bench-worker-{_id()}"
    marks = [tmp / f"{group}-{i}.first" for i in range(workers)]
    args = [SCRIPT, "--worker-child", group, "--topic", settings.kafka_topic]
    args += ["--data-dir", str(settings.data_dir), "--share", str(PARTITIONS // workers)]
    children = [
        await asyncio.create_subprocess_exec(sys.executable, *args, "--mark", str(mark))
        for mark in marks
    ]
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        while await committed(admin, group) < n:
            for child in children:
                if child.returncode is not None:
                    raise SystemExit(f"worker exited with {child.returncode}")
            await asyncio.sleep(0.02)
        done = time.time()
        first = min(float(mark.read_text()) for mark in marks if mark.exists())
    finally:
        await admin.close()
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                child.terminate()
        for child in children:
            try:
                await asyncio.wait_for(child.wait(), 30)
            except TimeoutError:
                child.kill()
                await child.wait()
    spent = [m.with_suffix(".cpu") for m in marks]
    cpu = sum(float(path.read_text()) for path in spent if path.exists())
    return done - first, cpu


async def drop_records(settings: BackendSettings, project: str, users: int) -> None:
    """Deletes the throughput run's user records (they would expire anyway)."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(settings.redis_url)
    try:
        keys = [record_key(project, f"user-{i}") for i in range(users)]
        for start in range(0, len(keys), 500):
            await client.delete(*keys[start : start + 500])
    finally:
        await client.aclose()


async def bytes_per_user(settings: BackendSettings) -> list[tuple[int, int, int]]:
    """[(events applied, stored bytes, Redis MEMORY USAGE bytes)] at each checkpoint."""
    import redis.asyncio as aioredis

    project, pipeline = f"bench_{_id()}", _id()
    specs = build_specs(snapshot(project, pipeline, 20, WINDOWS, recommender=False))
    assert len(specs.specs) == 20
    store = factory.make_online_store(settings)
    await store.initialize()
    client = aioredis.Redis.from_url(settings.redis_url)
    rng = random.Random(2)
    clock = {"now": wall_clock_ms() - 60 * 86_400_000}
    writer = FeatureWriter(store, now_ms=lambda: clock["now"])
    key = record_key(project, "user-1")
    results = []
    applied = 0
    try:
        for checkpoint in SIZE_CHECKPOINTS:
            while applied < checkpoint:
                batch = []
                for _ in range(min(100, checkpoint - applied)):
                    clock["now"] += rng.randrange(1, 600_000)  # ~5 minutes apart on average
                    name = EVENT_NAMES[applied % len(EVENT_NAMES)]
                    batch.append(
                        AppliedEvent(
                            0, applied, event_key(pipeline, name), clock["now"], properties(rng)
                        )
                    )
                    applied += 1
                await writer.write_project(project, specs, {"user-1": batch})
            json_bytes = sum([int(await client.hstrlen(key, f)) for f in ("rec", "ids")])
            memory = int(await client.memory_usage(key) or 0)
            results.append((applied, json_bytes, memory))
    finally:
        await client.delete(key)
        await client.aclose()
        await store.close()
    return results


async def throughput(args: argparse.Namespace, settings: BackendSettings) -> None:
    project, pipeline = f"bench_{_id()}", _id()
    recommender = args.mix == "recommender"
    features = snapshot(project, pipeline, args.features, WINDOWS, recommender)
    cache = factory.make_cache(settings)
    await cache.initialize()
    await publish_config(cache, features)
    await cache.close()
    await ensure_topic(settings, PARTITIONS)
    records = messages(project, pipeline, args.events, args.users)
    await produce(settings, records)
    tmp = Path(tempfile.mkdtemp(prefix="dps-bench-marks-"))
    rates: dict[str, list[float]] = {"raw": [], "1 worker": [], "2 workers": []}
    rates |= {"tiles": [], "pure": [], "1 worker cpu": [], "2 workers cpu": []}
    for _ in range(args.rounds):
        rates["raw"].append(args.events / await raw_consume(settings, args.events))
        freeze_long_lived_objects()  # the worker's GC settings, for the in-memory runs
        tiles_s, pure_s = in_memory(build_specs(features), records)
        rates["tiles"].append(args.events / tiles_s)
        rates["pure"].append(args.events / pure_s)
        for workers in (1, 2):
            await drop_records(settings, project, args.users)
            seconds, cpu = await workers_consume(settings, args.events, workers, tmp)
            name = f"{workers} worker{'s' if workers > 1 else ''}"
            rates[name].append(args.events / seconds)
            rates[f"{name} cpu"].append(cpu / args.events)
    await drop_records(settings, project, args.users)
    print(
        f"throughput: {args.events} events, {args.users} users, {PARTITIONS} partitions, "
        f"{args.features} features x {len(WINDOWS)} windows, mix {args.mix}; "
        f"load {os.getloadavg()[0]:.2f}"
    )
    for round_no in range(args.rounds):
        raw = rates["raw"][round_no]
        line = f"  round {round_no + 1}: raw aiokafka consume {raw:8.0f} events/s"
        for name in ("1 worker", "2 workers"):
            rate = rates[name][round_no]
            cpu_us = rates[f"{name} cpu"][round_no] * 1e6
            line += f" | {name} {rate:7.0f} events/s = {rate / raw:5.3f}x raw"
            line += f" ({cpu_us:4.0f} us CPU/event)"
        print(line)
        tiles, pure = rates["tiles"][round_no], rates["pure"][round_no]
        print(
            f"    no I/O, one process, CPU time: tile code alone {tiles:7.0f} events/s = "
            f"{tiles / raw:5.3f}x raw | with event and record decode/encode {pure:7.0f} "
            f"events/s = {pure / raw:5.3f}x raw"
        )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--users", type=int, default=1_000)
    parser.add_argument("--features", type=int, default=50)
    parser.add_argument("--mix", choices=["basic", "recommender"], default="recommender")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--skip-size", action="store_true")
    parser.add_argument("--worker-child", help=argparse.SUPPRESS)
    parser.add_argument("--topic", help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", help=argparse.SUPPRESS)
    parser.add_argument("--mark", help=argparse.SUPPRESS)
    parser.add_argument("--share", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker_child:
        await worker_child(
            args.topic, Path(args.data_dir), args.worker_child, Path(args.mark), args.share
        )
        return
    settings = bench_settings(f"bench-events-{_id()}", Path(tempfile.mkdtemp(prefix="dps-bench-")))
    async with asyncio.timeout(RUN_BOUND_S):
        await throughput(args, settings)
        if args.skip_size:
            return
        print("bytes per user: 20 features x 5 windows (5m 1h 24h 7d 30d), ~5 min between events")
        for applied, json_bytes, memory in await bytes_per_user(settings):
            print(f"  after {applied:6d} events: {json_bytes:9d} B stored, {memory:9d} B in Redis")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
