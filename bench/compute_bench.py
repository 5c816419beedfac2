"""Compute benchmark (not a test): throughput against raw Kafka, and bytes per user.

    .venv/bin/python bench/compute_bench.py [--events 40000] [--users 2000]

Needs the servers of `scripts/servers.sh start` (loopback Kafka and Redis; addresses
from KAFKA_BOOTSTRAP / REDIS_URL). Bounded: one topic of `--events` events, one
Redis database's worth of small keys, a few minutes at most.

1. Throughput: the same topic is read twice, each time by a fresh consumer group:
   by a bare aiokafka consumer that only counts records (the ceiling), and by the
   compute worker (decode, config lookup, read-apply-write per user on the Redis
   online store, commit). Both timings include joining the group. Printed: events/s
   of each and worker / raw.
2. Bytes per user: one user, 20 features x 5 windows (5m 1h 24h 7d 30d), events
   arriving every ~5 minutes of event time (so the 30d window fills after ~8,600
   events), applied in batches of 100 through the writer into Redis. Printed after
   10 ... 40,000 events: the stored JSON (`HSTRLEN`) and Redis' own `MEMORY USAGE`.
   Tiles outside every window are pruned on write, so the size stops growing once
   the longest window is full.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

# Run as a script (`make bench`): the repository root is not on sys.path by itself.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiokafka import AIOKafkaConsumer

from app.core.config_loader import ConfigLoader, publish_config
from app.core.settings import BackendSettings
from app.db import factory
from app.db.kafka import ensure_topic
from app.db.redis_online import record_key
from app.schemas.deployment import ConfigSnapshot
from app.schemas.event import EventMessage
from app.schemas.event import record_key as kafka_key
from app.tiles.record import AppliedEvent
from bench.common import EVENT_NAMES, feature_snapshot
from runtime.compute.metrics import ComputeMetrics
from runtime.compute.specs import build_specs, event_key
from runtime.compute.worker import (
    ComputeWorker,
    WorkerOptions,
    freeze_long_lived_objects,
    wall_clock_ms,
)
from runtime.compute.writer import FeatureWriter

SIZE_CHECKPOINTS = [10, 100, 1_000, 10_000, 20_000, 40_000]
RUN_BOUND_S = 600.0


def _id() -> str:
    return uuid.uuid4().hex[:24]


def snapshot(
    project_id: str, pipeline_id: str, features: int, windows: list[str]
) -> ConfigSnapshot:
    return feature_snapshot(project_id, pipeline_id, features, windows, pipeline_name="bench")


def properties(rng: random.Random) -> dict[str, Any]:
    return {"product_id": f"sku-{rng.randrange(1000)}", "price": rng.randrange(100, 20_000) / 100}


async def produce(
    settings: BackendSettings, project: str, pipeline: str, n: int, users: int
) -> None:
    producer = factory.make_producer(settings)
    await producer.start()
    rng = random.Random(1)
    now = wall_clock_ms()
    try:
        for start in range(0, n, 2_000):
            batch = []
            for i in range(start, min(n, start + 2_000)):
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
                batch.append((kafka_key(project, user), message.encode()))
            await producer.produce_many(batch)
    finally:
        await producer.stop()


async def raw_consume(settings: BackendSettings, n: int) -> float:
    """Seconds a bare aiokafka consumer (new group) takes to read n records."""
    consumer = AIOKafkaConsumer(
        settings.kafka_topic,
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=f"bench-raw-{_id()}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    started = time.perf_counter()
    await consumer.start()
    try:
        seen = 0
        while seen < n:
            batches = await consumer.getmany(timeout_ms=200, max_records=2_000)
            seen += sum(len(records) for records in batches.values())
        return time.perf_counter() - started
    finally:
        await consumer.stop()


async def worker_consume(settings: BackendSettings, n: int) -> float:
    """Seconds the compute worker (new group, Redis online store) takes to apply n."""
    cache = factory.make_cache(settings)
    config_store = factory.make_config_store(settings)
    store = factory.make_online_store(settings)
    for backend in (cache, config_store, store):
        await backend.initialize()
    loader = ConfigLoader(cache, config_store)
    await loader.start(preload=False)
    metrics = ComputeMetrics()
    writer = FeatureWriter(store, now_ms=wall_clock_ms, metrics=metrics)
    consumer = factory.make_consumer(settings, f"bench-worker-{_id()}")
    worker = ComputeWorker(consumer, writer, loader, metrics=metrics, options=WorkerOptions())
    started = time.perf_counter()
    freeze_long_lived_objects()  # as compute_startup does for the process
    task = asyncio.create_task(worker.run())
    try:
        while True:
            done = sum(
                metrics.registry.get_sample_value(name) or 0
                for name in (
                    "compute_events_applied_total",
                    "compute_events_late_total",
                    "compute_events_duplicate_total",
                )
            )
            if done >= n:
                break
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        return time.perf_counter() - started
    finally:
        worker.stop()
        await task
        await loader.stop()
        for backend in (store, config_store, cache):
            await backend.close()


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
    """[(events applied, stored JSON bytes, Redis MEMORY USAGE bytes)] at each checkpoint."""
    import redis.asyncio as aioredis

    project, pipeline = f"bench_{_id()}", _id()
    specs = build_specs(snapshot(project, pipeline, 20, ["5m", "1h", "24h", "7d", "30d"]))
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
            json_bytes = int(await client.hstrlen(key, "rec"))
            memory = int(await client.memory_usage(key) or 0)
            results.append((applied, json_bytes, memory))
    finally:
        await client.delete(key)
        await client.aclose()
        await store.close()
    return results


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=40_000)
    parser.add_argument("--users", type=int, default=2_000)
    args = parser.parse_args()
    settings = BackendSettings(
        event_log="kafka",
        online_store="redis",
        cache="redis",
        config_store="sqlite",
        kafka_bootstrap=os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:39092"),
        redis_url=os.environ.get("REDIS_URL", "redis://127.0.0.1:36379/0"),
        kafka_topic=f"bench-events-{_id()}",
        data_dir=Path(tempfile.mkdtemp(prefix="dps-bench-")),
    )

    project, pipeline = f"bench_{_id()}", _id()
    features = snapshot(project, pipeline, 8, ["5m", "1h", "24h"])
    async with asyncio.timeout(RUN_BOUND_S):
        cache = factory.make_cache(settings)
        await cache.initialize()
        await publish_config(cache, features)
        await cache.close()
        await ensure_topic(settings)
        await produce(settings, project, pipeline, args.events, args.users)

        raw_s = await raw_consume(settings, args.events)
        worker_s = await worker_consume(settings, args.events)
        raw_rate, worker_rate = args.events / raw_s, args.events / worker_s
        print(f"throughput: {args.events} events, {args.users} users, 8 features x 3 windows")
        print(f"  raw aiokafka consume : {raw_rate:10.0f} events/s")
        print(f"  compute worker       : {worker_rate:10.0f} events/s (Redis online store)")
        print(f"  ratio worker / raw   : {worker_rate / raw_rate:10.3f}")
        await drop_records(settings, project, args.users)

        print("bytes per user: 20 features x 5 windows (5m 1h 24h 7d 30d), ~5 min between events")
        for applied, json_bytes, memory in await bytes_per_user(settings):
            print(f"  after {applied:6d} events: {json_bytes:9d} B JSON, {memory:9d} B in Redis")


if __name__ == "__main__":
    asyncio.run(main())
