"""Ingestion benchmark (not a test): the real ingestion process against a bare endpoint and
against the raw aiokafka producer, measured in the same run.

    .venv/bin/python bench/ingestion_bench.py [--requests 3000] [--rate 300] [--seconds 5]
        [--rounds 3] [--before DIR]

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
(idempotent, acks=all, no linger) sending the very same EventMessage values.

Figures:
1. single events, closed loop at concurrency 32: requests/s;
2. single events at a fixed rate (`--rate` for `--seconds`, open loop, latency measured
   from the scheduled send time): p50/p99; the raw producer's send_and_wait at that rate;
3. batches of 500 events, closed loop at concurrency 2: events/s; the raw producer sending
   the same 500 messages and waiting for all, at concurrency 2.
Each printed as ratios: ingestion / bare endpoint and ingestion / raw producer, medians of
`--rounds` rounds whose server order alternates (A/B/A...: the machine is shared).
`--before DIR` adds an older checkout's ingestion process (`git archive <commit> | tar -x
-C DIR`) to the same rounds, so before and after are measured together.

Server CPU per single event (from /proc, over the closed loop) is printed too: on a machine
whose cores other work shares, it is the steadier figure.

Round trips: the closed loop's Redis calls per single event (admissions and confirms,
each carrying the concurrent requests' items) are read from the process's
`ingest_cache_calls_total` before and after; sent one at a time an event costs 2
(tests/runtime/ingestion/test_round_trips.py counts them at the clients), and one
produce, whose records share produce requests with the concurrent ones (one request in
flight per broker: what arrives meanwhile goes in the next one).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
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

import httpx
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
        linger_ms=0,
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
async def publish(target: Target) -> None:
    """Writes the config and the secrets into Redis, as the config API does. The secrets'
    copy expires after 5 minutes (app/core/secrets.py) and the benchmark's config store
    does not hold the pipeline, so this runs again before every measurement."""
    cache = RedisCache(BackendSettings(redis_url=REDIS_URL))
    await cache.initialize()
    try:
        await publish_config(cache, snapshot(target.project_id, target.pipeline_id))
        secrets = WebhookSecrets(current=target.secret)
        await write_secrets(cache, target.project_id, target.pipeline_id, secrets)
    finally:
        await cache.close()


async def cache_calls(port: int) -> float | None:
    """Returns the process's ingest_cache_calls_total summed over calls (None: no such
    metric, e.g. an older checkout or the bare endpoint)."""
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{port}/metrics")
    found = re.findall(r"^ingest_cache_calls_total\{[^}]*\} (\S+)$", response.text, re.MULTILINE)
    return sum(float(v) for v in found) if response.status_code == 200 and found else None


def cpu_seconds(pid: int) -> float:
    """Returns the CPU time (user + system) the process has used so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(
    port: int, pid: int, target: Target, args: argparse.Namespace
) -> dict[str, float]:
    await closed_loop(port, target.single(200), CONCURRENCY)  # warm-up
    calls_before, cpu_before = await cache_calls(port), cpu_seconds(pid)
    rps, single_errors = await closed_loop(port, target.single(args.requests), CONCURRENCY)
    calls_after, cpu_after = await cache_calls(port), cpu_seconds(pid)
    fixed = target.single(int(args.rate * args.seconds))
    latencies, rate_errors = await http_fixed_rate(port, fixed, args.rate, args.seconds)
    batch_rps, batch_errors = await closed_loop(
        port, target.batches(args.batches), BATCH_CONCURRENCY
    )
    errors = single_errors + rate_errors + batch_errors
    if errors:
        print(f"  !! {errors} non-2xx answers on port {port}", flush=True)
    figures = {
        "single_rps": rps,
        "cpu_ms": (cpu_after - cpu_before) * 1000 / args.requests,
        "p50": statistics.median(latencies),
        "p99": percentile(latencies, 0.99),
        "batch_eps": batch_rps * BATCH_SIZE,
    }
    if calls_before is not None and calls_after is not None:
        figures["redis_per_event"] = (calls_after - calls_before) / args.requests
    return figures


def medians(rounds: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}


async def run(args: argparse.Namespace, tmp: Path) -> None:
    project_id, pipeline_id = f"bench_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex[:24]
    topic = f"bench_ingest_{uuid.uuid4().hex[:8]}"
    secret = generate_secret()
    target = Target(project_id, pipeline_id, secret)
    await publish(target)

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
    before_port = free_port()
    (tmp / "before").mkdir()
    before_env = {**env, "INGEST_PORT": str(before_port), "DATA_DIR": str(tmp / "before")}
    before_env["PYTHONPATH"] = str(args.before)
    servers: list[tuple[str, int]] = [("ingestion", ingest_port), ("bare", bare_port)]
    pids: dict[int, int] = {}
    with contextlib.ExitStack() as stack:
        children = [
            (ingest_port, tmp / "ingest.log", process(ingest_cmd, env, tmp / "ingest.log")),
            (bare_port, tmp / "bare.log", process(bare_cmd, env, tmp / "bare.log")),
        ]
        if args.before is not None:
            log = tmp / "before.log"
            children.append((before_port, log, process(ingest_cmd, before_env, log, args.before)))
            servers.insert(1, ("before", before_port))
        for port, log, started in children:
            child = stack.enter_context(started)
            wait_port(port, child, log)
            pids[port] = child.pid
        print(f"servers {servers}, kafka {KAFKA_BOOTSTRAP}", flush=True)
        figures: dict[str, list[dict[str, float]]] = {name: [] for name, _ in servers}
        for round_no in range(args.rounds):
            order = servers if round_no % 2 == 0 else servers[::-1]
            for name, port in order:
                await publish(target)
                figures[name].append(await measure(port, pids[port], target, args))
            print(f"round {round_no + 1}/{args.rounds} done", flush=True)
    rounds_total = args.rounds * len(servers)
    total = rounds_total * (args.requests + int(args.rate * args.seconds))
    total += rounds_total * args.batches * BATCH_SIZE
    raw = await raw_producer_figures(messages(target, total), args, f"{topic}_raw")
    report({name: medians(rounds) for name, rounds in figures.items()}, raw, args)


def report(
    got: dict[str, dict[str, float]], raw: dict[str, float], args: argparse.Namespace
) -> None:
    rows = [
        (f"single events/s (closed loop, c={CONCURRENCY})", "single_rps"),
        ("server CPU ms per single event", "cpu_ms"),
        (f"p50 ms at {args.rate:g}/s", "p50"),
        (f"p99 ms at {args.rate:g}/s", "p99"),
        (f"batch events/s ({BATCH_SIZE}/batch, c={BATCH_CONCURRENCY})", "batch_eps"),
    ]
    bare = got["bare"]
    measured = [name for name in got if name != "bare"]
    print(f"\nmedians of {args.rounds} round(s); load average {os.getloadavg()[0]:.1f}\n")
    head = "".join(f"{name:>11}" for name in [*measured, "bare", "raw prod"])
    ratios = "".join(f"{name[:6] + '/bare':>12}{name[:6] + '/raw':>12}" for name in measured)
    print(f"{'':44}{head}{ratios}")
    for label, key in rows:
        values = "".join(f"{got[name][key]:11.2f}" for name in [*measured, "bare"])
        reference = raw.get(key)
        line = f"{label:44}{values}" + (f"{reference:11.1f}" if reference else f"{'-':>11}")
        for name in measured:
            line += f"{got[name][key] / bare[key]:12.2f}"
            line += f"{got[name][key] / reference:12.2f}" if reference else f"{'-':>12}"
        print(line)
    print("\n(ratios are ingestion / reference: < 1 for rates means slower, > 1 for latencies)")
    if "redis_per_event" in got["ingestion"]:
        print(
            f"Redis round trips per single event in the closed loop: "
            f"{got['ingestion']['redis_per_event']:.2f} (2 when sent one at a time); "
            "Kafka: one produce per event, sharing produce requests (one in flight per broker)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000, help="closed-loop single events")
    parser.add_argument("--rate", type=float, default=300.0, help="fixed rate, requests/s")
    parser.add_argument("--seconds", type=float, default=5.0, help="fixed-rate duration")
    parser.add_argument("--batches", type=int, default=20, help="batches of 500 events")
    parser.add_argument("--rounds", type=int, default=3, help="alternated rounds (medians)")
    parser.add_argument(
        "--before", type=Path, help="an older checkout whose ingestion is measured alongside"
    )
    parser.add_argument("--serve-bare", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_bare:
        serve_bare(args.serve_bare)
        return
    with tempfile.TemporaryDirectory(prefix="ingestion_bench_") as tmp_dir:
        asyncio.run(run(args, Path(tmp_dir)))


if __name__ == "__main__":
    main()
