"""Ingestion benchmark (not a test): the real ingestion process against a bare endpoint and
against the raw aiokafka producer, measured in the same run.

    .venv/bin/python bench/ingestion_bench.py [--requests 3000] [--rate 300] [--seconds 5]

Loopback only, bounded (about a minute). Needs Kafka and Redis from `scripts/servers.sh
start` (KAFKA_BOOTSTRAP, REDIS_URL); the config store is a SQLite file in a temp dir.

Two servers run as separate processes with the same uvicorn settings
(`uvicorn.run(app, host, port, log_config=None)`, LOG_LEVEL=WARNING): the real ingestion
process (`python -m runtime.ingestion.main`, in the order of runtime/ingestion/service.py:
for a single event, config lookup, signature, JSON, validation, replay and dedup claims in
one call, rate limits, Kafka acks=all, confirm; for a batch, config lookup, signature,
replay claim, JSON, rate limits, validation, dedup claims, Kafka acks=all, confirm) and a
bare FastAPI endpoint that only reads the body and answers 202. Every request is
pre-signed with a unique event id; the client is the minimal keep-alive HTTP/1.1 client of
bench/common.py on raw sockets (httpx would cost more per request than the bare server
does). The raw producer is aiokafka configured like the event log adapter
(idempotent, acks=all, linger 5 ms) sending the very same EventMessage values.

Figures:
1. single events, closed loop at concurrency 32: requests/s;
2. single events at a fixed rate (`--rate` for `--seconds`, open loop, latency measured
   from the scheduled send time): p50/p99; the raw producer's send_and_wait at that rate;
3. batches of 500 events, closed loop at concurrency 2: events/s; the raw producer sending
   the same 500 messages and waiting for all, at concurrency 2.
Each printed as ratios: ingestion / bare endpoint and ingestion / raw producer.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

# Run as a script (`make bench`): the repository root is not on sys.path by itself.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiokafka import AIOKafkaProducer
from fastapi import FastAPI, Request
from fastapi.responses import Response

from app.core.config_loader import publish_config
from app.core.logging import configure_logging
from app.core.secrets import write_secrets
from app.core.settings import BackendSettings
from app.db.kafka import ensure_topic
from app.db.redis_cache import RedisCache
from app.schemas.deployment import ConfigSnapshot, PipelineSnapshot
from app.schemas.event import EventMessage, record_key
from app.schemas.pipeline import EventDefinition, EventField, WebhookSecrets
from app.services.webhook_secrets import generate_secret
from bench.common import (
    Connection,
    free_port,
    percentile,
    process,
    raw_request,
    serve,
    wait_port,
)
from runtime.ingestion.signature import sign

KAFKA_BOOTSTRAP = os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:39092")
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:36379/0")
CONCURRENCY = 32
BATCH_SIZE = 500
BATCH_CONCURRENCY = 2


def bare_app() -> FastAPI:
    """Reads the body and answers 202: the floor any ingestion endpoint stands on."""
    configure_logging(os.environ.get("LOG_LEVEL", "WARNING"))
    app = FastAPI()

    @app.post("/ingest/{project_id}/{pipeline_id}")
    async def one(request: Request) -> Response:
        await request.body()
        return Response(b'{"accepted":1}', status_code=202, media_type="application/json")

    @app.post("/ingest/{project_id}/{pipeline_id}/batch")
    async def many(request: Request) -> Response:
        await request.body()
        return Response(b'{"accepted":1}', status_code=202, media_type="application/json")

    return app


def serve_bare(port: int) -> None:
    serve(bare_app(), port)


# -- workload -------------------------------------------------------------------------------
def envelope(n: int) -> dict[str, Any]:
    return {
        "event": "add_to_cart",
        "user_id": f"user-{n % 1000}",
        "event_id": uuid.uuid4().hex,
        "properties": {"product_id": f"sku-{n % 40}", "price": 9.5 + n % 7, "quantity": 1},
    }


def snapshot(project_id: str, pipeline_id: str) -> ConfigSnapshot:
    fields = [
        EventField(name="product_id", type="string", required=True),
        EventField(name="price", type="number"),
        EventField(name="quantity", type="number"),
    ]
    pipeline = PipelineSnapshot(
        id=pipeline_id,
        name="storefront",
        category="behavioral",
        status="active",
        events=[EventDefinition(name="add_to_cart", fields=fields)],
    )
    return ConfigSnapshot(project_id=project_id, version=1, pipelines=[pipeline], features=[])


class Target:
    """Pre-signed requests for one project/pipeline."""

    def __init__(self, project_id: str, pipeline_id: str, secret: str) -> None:
        self.path = f"/ingest/{project_id}/{pipeline_id}"
        self.secret = secret
        self.project_id, self.pipeline_id = project_id, pipeline_id

    def single(self, count: int) -> list[bytes]:
        return [self._signed(self.path, json.dumps(envelope(n)).encode()) for n in range(count)]

    def batches(self, count: int) -> list[bytes]:
        bodies = [
            json.dumps({"events": [envelope(n) for n in range(BATCH_SIZE)]}).encode()
            for _ in range(count)
        ]
        return [self._signed(f"{self.path}/batch", body) for body in bodies]

    def _signed(self, path: str, body: bytes) -> bytes:
        headers = sign(self.secret, f"msg_{uuid.uuid4().hex}", int(time.time()), body)
        return raw_request(path, body, headers)


def messages(target: Target, count: int) -> list[tuple[bytes, bytes]]:
    """The Kafka records ingestion would write for `count` events."""
    now = int(time.time() * 1000)
    out = []
    for n in range(count):
        e = envelope(n)
        message = EventMessage(
            project_id=target.project_id,
            pipeline_id=target.pipeline_id,
            event=e["event"],
            user_id=e["user_id"],
            event_id=e["event_id"],
            event_time_ms=now,
            received_at_ms=now,
            version=1,
            properties=e["properties"],
        )
        out.append((record_key(target.project_id, e["user_id"]), message.encode()))
    return out


# -- load shapes ------------------------------------------------------------------------------
async def closed_loop(port: int, requests: list[bytes], concurrency: int) -> tuple[float, int]:
    """Returns (requests/s, non-2xx count) sending every request once."""
    queue = list(reversed(requests))
    errors = 0

    async def worker() -> None:
        nonlocal errors
        conn = await Connection.open(port)
        try:
            while queue:
                if (await conn.send(queue.pop()))[0] >= 300:
                    errors += 1
        finally:
            await conn.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(requests) / (time.perf_counter() - started), errors


async def fixed_rate(
    call: Callable[[int], Awaitable[bool]], rate: float, seconds: float, concurrency: int
) -> tuple[list[float], int]:
    """Calls `call(i)` at `rate`/s (open loop, at most `concurrency` in flight); returns
    latencies in ms measured from each call's scheduled time, and the failure count."""
    total = int(rate * seconds)
    slots = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    errors = 0
    start = time.perf_counter() + 0.05

    async def one(i: int) -> None:
        nonlocal errors
        scheduled = start + i / rate
        async with slots:
            if not await call(i):
                errors += 1
            latencies.append((time.perf_counter() - scheduled) * 1000)

    tasks = []
    for i in range(total):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)
    return latencies, errors


async def http_fixed_rate(
    port: int, requests: list[bytes], rate: float, seconds: float
) -> tuple[list[float], int]:
    pool: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(CONCURRENCY):
        pool.put_nowait(await Connection.open(port))

    async def call(i: int) -> bool:
        conn = await pool.get()
        try:
            return (await conn.send(requests[i]))[0] < 300
        finally:
            pool.put_nowait(conn)

    try:
        return await fixed_rate(call, rate, seconds, CONCURRENCY)
    finally:
        while not pool.empty():
            await pool.get_nowait().close()


async def raw_producer_figures(
    records: list[tuple[bytes, bytes]], args: argparse.Namespace, topic: str
) -> dict[str, float]:
    """The same three shapes with aiokafka alone, on the same messages."""
    rate, seconds = args.rate, args.seconds
    await ensure_topic(BackendSettings(kafka_bootstrap=KAFKA_BOOTSTRAP, kafka_topic=topic))
    producer = AIOKafkaProducer(
        bootstrap_servers=KAFKA_BOOTSTRAP,
        enable_idempotence=True,
        acks="all",
        linger_ms=5,
        request_timeout_ms=5000,
    )
    await producer.start()
    try:
        it = iter(records)

        async def send_one(_: int) -> bool:
            key, value = next(it)
            await producer.send_and_wait(topic, value=value, key=key)
            return True

        # Closed loop, one awaited send per "request", like one single-event request.
        single_n = args.requests
        started = time.perf_counter()
        sem = asyncio.Semaphore(CONCURRENCY)

        async def bounded(i: int) -> None:
            async with sem:
                await send_one(i)

        await asyncio.gather(*(bounded(i) for i in range(single_n)))
        single_rate = single_n / (time.perf_counter() - started)
        latencies, _ = await fixed_rate(send_one, rate, seconds, CONCURRENCY)

        async def batch(chunk: list[tuple[bytes, bytes]]) -> None:
            futures = [await producer.send(topic, value=v, key=k) for k, v in chunk]
            await asyncio.gather(*futures)

        rest = list(it)
        chunks = [rest[i : i + BATCH_SIZE] for i in range(0, len(rest), BATCH_SIZE)]
        chunks = [c for c in chunks if len(c) == BATCH_SIZE]
        started = time.perf_counter()
        for i in range(0, len(chunks), BATCH_CONCURRENCY):
            await asyncio.gather(*(batch(c) for c in chunks[i : i + BATCH_CONCURRENCY]))
        batch_rate = len(chunks) * BATCH_SIZE / (time.perf_counter() - started)
    finally:
        await producer.stop()
    return {
        "single_rps": single_rate,
        "p50": statistics.median(latencies),
        "p99": percentile(latencies, 0.99),
        "batch_eps": batch_rate,
    }


# -- the run ----------------------------------------------------------------------------------
async def measure(port: int, target: Target, args: argparse.Namespace) -> dict[str, float]:
    await closed_loop(port, target.single(200), CONCURRENCY)  # warm-up
    rps, single_errors = await closed_loop(port, target.single(args.requests), CONCURRENCY)
    fixed = target.single(int(args.rate * args.seconds))
    latencies, rate_errors = await http_fixed_rate(port, fixed, args.rate, args.seconds)
    batch_rps, batch_errors = await closed_loop(
        port, target.batches(args.batches), BATCH_CONCURRENCY
    )
    errors = single_errors + rate_errors + batch_errors
    if errors:
        print(f"  !! {errors} non-2xx answers on port {port}", flush=True)
    return {
        "single_rps": rps,
        "p50": statistics.median(latencies),
        "p99": percentile(latencies, 0.99),
        "batch_eps": batch_rps * BATCH_SIZE,
    }


async def run(args: argparse.Namespace, tmp: Path) -> None:
    project_id, pipeline_id = f"bench_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex[:24]
    topic = f"bench_ingest_{uuid.uuid4().hex[:8]}"
    secret = generate_secret()
    cache = RedisCache(BackendSettings(redis_url=REDIS_URL))
    await cache.initialize()
    await publish_config(cache, snapshot(project_id, pipeline_id))
    await write_secrets(cache, project_id, pipeline_id, WebhookSecrets(current=secret))
    await cache.close()
    target = Target(project_id, pipeline_id, secret)

    ingest_port, bare_port = free_port(), free_port()
    env = {
        **os.environ,
        "ENVIRONMENT": "development",
        "LOG_LEVEL": "WARNING",
        "CONFIG_STORE": "sqlite",
        "DATA_DIR": str(tmp),
        "CACHE": "redis",
        "EVENT_LOG": "kafka",
        "REDIS_URL": REDIS_URL,
        "KAFKA_BOOTSTRAP": KAFKA_BOOTSTRAP,
        "KAFKA_TOPIC": topic,
        "INGEST_PORT": str(ingest_port),
        "INGEST_RATE_LIMIT_PROJECT": "100000000/minute",
        "INGEST_RATE_LIMIT_PIPELINE": "100000000/minute",
    }
    python = sys.executable
    ingest_cmd = [python, "-m", "runtime.ingestion.main"]
    bare_cmd = [python, __file__, "--serve-bare", str(bare_port)]
    with (
        process(ingest_cmd, env, tmp / "ingest.log") as ingest,
        process(bare_cmd, env, tmp / "bare.log") as bare,
    ):
        wait_port(ingest_port, ingest, tmp / "ingest.log")
        wait_port(bare_port, bare, tmp / "bare.log")
        print(f"ingestion :{ingest_port}, bare :{bare_port}, kafka {KAFKA_BOOTSTRAP}", flush=True)
        got = await measure(ingest_port, target, args)
        floor = await measure(bare_port, target, args)
    total = args.requests + int(args.rate * args.seconds) + args.batches * BATCH_SIZE
    raw = await raw_producer_figures(messages(target, total), args, f"{topic}_raw")
    report(got, floor, raw, args)


def report(
    got: dict[str, float], bare: dict[str, float], raw: dict[str, float], args: argparse.Namespace
) -> None:
    rows = [
        (f"single events/s (closed loop, c={CONCURRENCY})", "single_rps"),
        (f"p50 ms at {args.rate:g}/s", "p50"),
        (f"p99 ms at {args.rate:g}/s", "p99"),
        (f"batch events/s ({BATCH_SIZE}/batch, c={BATCH_CONCURRENCY})", "batch_eps"),
    ]
    print()
    print(f"{'':44} {'ingestion':>10} {'bare':>10} {'raw prod':>10} {'/bare':>7} {'/raw':>7}")
    for label, key in rows:
        print(
            f"{label:44} {got[key]:10.1f} {bare[key]:10.1f} {raw[key]:10.1f} "
            f"{got[key] / bare[key]:7.2f} {got[key] / raw[key]:7.2f}"
        )
    print("\n(ratios are ingestion / reference: < 1 for rates means slower, > 1 for latencies)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000, help="closed-loop single events")
    parser.add_argument("--rate", type=float, default=300.0, help="fixed rate, requests/s")
    parser.add_argument("--seconds", type=float, default=5.0, help="fixed-rate duration")
    parser.add_argument("--batches", type=int, default=20, help="batches of 500 events")
    parser.add_argument("--serve-bare", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_bare:
        serve_bare(args.serve_bare)
        return
    with tempfile.TemporaryDirectory(prefix="ingestion_bench_") as tmp_dir:
        asyncio.run(run(args, Path(tmp_dir)))


if __name__ == "__main__":
    main()
