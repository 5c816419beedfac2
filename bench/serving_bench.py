"""Serving benchmark (not a test): read latency and throughput against a bare endpoint,
and freshness from ingestion to serving on real Kafka.

    .venv/bin/python bench/serving_bench.py [--users 100000] [--seconds 5]

Loopback only, bounded in time (a few minutes). Needs Kafka from `scripts/servers.sh
start` (KAFKA_BOOTSTRAP); starts its OWN redis-server on a free port (the populated
records take about 1.5 GB, which does not belong in the shared test Redis) and stops it
at the end.

1. Reads. 50 features x 5 windows (5m 1h 24h 7d 30d, every aggregation) over `--users`
   users, each record prebuilt with compute's pure code from ~10 events spread over the
   last days and written through the online store interface (Redis). Two servers run
   as separate processes with the same uvicorn settings: the real serving process
   (`python -m runtime.serving.main`: JWT auth, config loader, tile merge, JSON) and a
   bare endpoint that does one raw store read of the same key (HMGET; for a batch one
   pipelined HMGET of the same keys) and returns the stored bytes. Each is loaded for
   `--seconds` per scenario by a closed-loop client (httpx) in this process: single
   reads of random users at concurrency 1 and 16, 100-user batch reads at concurrency 1
   and 4. Printed: p50/p99 latency, requests/s and the server's CPU time per request
   (from /proc) of each, and serving / bare. `--before DIR` adds the serving process of
   another checkout (`git archive` of an older commit into DIR), loaded in turn with
   the other two in every scenario, so a change is measured before -> after in one
   sitting.
2. Freshness. Config API, ingestion, compute and serving run as their real processes
   on real Kafka; a pipeline and a COUNT feature are created and deployed through the
   config API; signed events go to ingestion at a steady `--rate` for `--fresh-seconds`.
   For each event, the time from ingestion's 202 to the first serving read that shows
   it (one batch read of the users still waiting, every ~5 ms). Printed: p50/p99/max.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import socket
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# Run as a script (`make bench`): the repository root is not on sys.path by itself.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
import redis.asyncio as aioredis
from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import SecretStr
from standardwebhooks.webhooks import Webhook

from app.core.auth import issue_token
from app.core.config_loader import publish_config
from app.core.settings import AuthSettings, BackendSettings
from app.db.redis_cache import RedisCache
from app.db.redis_online import RedisOnlineStore, record_key
from app.schemas.deployment import ConfigSnapshot
from app.tiles.record import AppliedEvent, apply_batch
from bench.common import (
    EVENT_NAMES,
    ROOT,
    START_BOUND_S,
    Connection,
    cpu_seconds,
    feature_snapshot,
    free_port,
    percentile,
    process,
    serve,
    wait_http,
)
from runtime.compute.specs import build_specs, event_key

WINDOWS = ["5m", "1h", "24h", "7d", "30d"]
VARIANTS = 64  # distinct prebuilt records, assigned to users round robin
KAFKA_BOOTSTRAP = os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:39092")


# -- config ----------------------------------------------------------------------------------
def snapshot(
    project_id: str, pipeline_id: str, features: int, recommender: bool = False
) -> ConfigSnapshot:
    return feature_snapshot(
        project_id,
        pipeline_id,
        features,
        WINDOWS,
        pipeline_name="storefront",
        name_format="f{n:02d}_{aggregation}",
        recommender=recommender,
    )


def prebuilt_records(snap: ConfigSnapshot, now_ms: int) -> list[dict[str, Any]]:
    """VARIANTS records of ~10 events each, from the last minutes to the last weeks."""
    specs = build_specs(snap)
    pipeline_id = snap.pipelines[0].id
    rng = random.Random(7)
    records = []
    for _ in range(VARIANTS):
        events = [
            AppliedEvent(
                0,
                i,
                event_key(pipeline_id, rng.choice(EVENT_NAMES)),
                now_ms - int(rng.expovariate(1 / (2 * 86_400_000))),
                {"product_id": f"sku-{rng.randint(1, 40)}", "price": round(rng.uniform(1, 200), 2)},
            )
            for i in range(10)
        ]
        records.append(apply_batch(None, specs.by_event, events, now_ms).record)
    return records


# -- the bare endpoint (run in a child process with the same uvicorn settings) ---------------
def bare_app(redis_url: str) -> FastAPI:
    """One raw store read of the same key(s) serving reads, the stored bytes returned."""
    app = FastAPI()
    client = aioredis.Redis.from_url(redis_url, max_connections=64)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/raw/{project_id}/{user_id}")
    async def one(project_id: str, user_id: str) -> Response:
        rec, _gen = await client.hmget(record_key(project_id, user_id), ["rec", "gen"])
        return Response(rec or b"null", media_type="application/json")

    @app.post("/raw/{project_id}/batch")
    async def many(project_id: str, request: Request) -> Response:
        user_ids = json.loads(await request.body())["user_ids"]
        pipe = client.pipeline(transaction=False)
        for user_id in user_ids:
            pipe.hmget(record_key(project_id, user_id), ["rec", "gen"])
        rows = await pipe.execute()
        body = b"[" + b",".join(row[0] or b"null" for row in rows) + b"]"
        return Response(body, media_type="application/json")

    return app


def serve_bare(port: int, redis_url: str) -> None:
    serve(bare_app(redis_url), port)


# -- load ------------------------------------------------------------------------------------
Call = Callable[[Connection], Awaitable[tuple[int, bytes]]]


async def load(
    call: Call, concurrency: int, seconds: float, port: int, headers: dict[str, str], pid: int
) -> tuple[float, float, float, int, float]:
    """Closed-loop load, one connection per worker; returns (p50 ms, p99 ms, requests/s,
    non-200 answers, CPU ms per request of the server process `pid`)."""
    latencies: list[float] = []
    errors = 0
    connections = [Connection(port, headers) for _ in range(concurrency)]
    for connection in connections:  # warm the connections and the server's caches
        for _ in range(5):
            await call(connection)
    deadline = time.perf_counter() + seconds

    async def worker(connection: Connection) -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            status, _ = await call(connection)
            latencies.append(time.perf_counter() - started)
            errors += status != 200

    cpu_before = cpu_seconds(pid)
    started = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in connections))
    elapsed = time.perf_counter() - started
    cpu_ms = (cpu_seconds(pid) - cpu_before) * 1000 / max(1, len(latencies))
    for connection in connections:
        await connection.close()
    return (
        percentile(latencies, 0.50) * 1000,
        percentile(latencies, 0.99) * 1000,
        len(latencies) / elapsed,
        errors,
        cpu_ms,
    )


async def read_benchmark(args: argparse.Namespace, env: dict[str, str], tmp: Path) -> None:
    project_id = f"bench_{uuid.uuid4().hex[:8]}"
    backends = BackendSettings(redis_url=env["REDIS_URL"], data_dir=tmp)
    snap = snapshot(project_id, uuid.uuid4().hex[:24], args.features, args.mix == "recommender")
    cache = RedisCache(backends)
    store = RedisOnlineStore(backends)
    await cache.initialize()
    await store.initialize()
    try:
        await publish_config(cache, snap)
        now_ms = time.time_ns() // 1_000_000
        records = prebuilt_records(snap, now_ms)
        ttl = build_specs(snap).ttl_seconds or 3600
        size = len(json.dumps(records[0], separators=(",", ":")))
        started = time.perf_counter()
        semaphore = asyncio.Semaphore(64)

        async def put(n: int) -> None:
            async with semaphore:
                await store.put(project_id, f"user-{n}", records[n % VARIANTS], ttl, None)

        for chunk in range(0, args.users, 5000):
            await asyncio.gather(*(put(n) for n in range(chunk, min(args.users, chunk + 5000))))
        populate_s = time.perf_counter() - started
    finally:
        await store.close()
        await cache.close()
    print(
        f"populated {args.users} users x {args.features} features x {len(WINDOWS)} windows "
        f"through RedisOnlineStore.put in {populate_s:.1f}s (record ~{size / 1024:.1f} KB JSON)"
    )

    auth = AuthSettings(secret=SecretStr(env["JWT_SECRET"]))
    token = {"authorization": f"Bearer {issue_token(auth, 'bench', [project_id])}"}
    serving_port, bare_port, before_port = free_port(), free_port(), free_port()
    python = sys.executable
    rng = random.Random(3)

    def user() -> str:
        return f"user-{rng.randrange(args.users)}"

    def single(path: str) -> Call:
        return lambda conn: conn.request("GET", path.format(user=user()))

    def batch(path: str) -> Call:
        def call(conn: Connection) -> Awaitable[tuple[int, bytes]]:
            body = json.dumps({"user_ids": [user() for _ in range(100)]}).encode()
            return conn.request("POST", path, body)

        return call

    scenarios = [
        ("single", 1, f"/features/{project_id}/users/{{user}}", f"/raw/{project_id}/{{user}}"),
        ("single", 16, f"/features/{project_id}/users/{{user}}", f"/raw/{project_id}/{{user}}"),
        ("batch100", 1, f"/features/{project_id}/users/batch", f"/raw/{project_id}/batch"),
        ("batch100", 4, f"/features/{project_id}/users/batch", f"/raw/{project_id}/batch"),
    ]
    serving_cmd = [python, "-m", "runtime.serving.main"]
    bare_cmd = [python, __file__, "--serve-bare", str(bare_port), "--redis-url", env["REDIS_URL"]]
    with ExitStack() as stack:
        servers = {}  # name -> (port, process), started in turn
        starts = [("serving", serving_port, serving_cmd, ROOT), ("bare", bare_port, bare_cmd, ROOT)]
        if args.before:
            starts.append(("before", before_port, serving_cmd, args.before))
        for name, port, command, cwd in starts:
            log = tmp / f"{name}.log"
            own = {**env, "SERVING_PORT": str(port)}
            child = stack.enter_context(process(command, own, log, cwd))
            wait_http(f"http://127.0.0.1:{port}/health", child, log)
            servers[name] = (port, child.pid)
        print(
            f"\n{'scenario':<10}{'conc':>5} {'server':<8}{'p50 / p99 ms':>17}{'req/s':>8}"
            f"{'CPU ms/req':>11}   vs bare: {'p50':>5} {'p99':>5} {'CPU':>5}"
        )
        for name, conc, serving_path, bare_path in scenarios:
            make = single if name == "single" else batch
            port, pid = servers["bare"]
            b = await load(make(bare_path), conc, args.seconds, port, {}, pid)
            rows = [("bare", b)]
            for server in ("serving", "before"):
                if server in servers:
                    port, pid = servers[server]
                    r = await load(make(serving_path), conc, args.seconds, port, token, pid)
                    rows.append((server, r))
            for server, r in rows:
                versus = (
                    ""
                    if server == "bare"
                    else f"   {r[0] / b[0]:>13.1f}x {r[1] / b[1]:>4.1f}x {r[4] / b[4]:>4.1f}x"
                )
                errors = f"  !! {r[3]} errors" if r[3] else ""
                print(
                    f"{name:<10}{conc:>5} {server:<8}{r[0]:>8.2f} / {r[1]:>6.2f}{r[2]:>8.0f}"
                    f"{r[4]:>11.2f}{versus}{errors}"
                )


# -- freshness -------------------------------------------------------------------------------
def sign_headers(secret: str, body: bytes) -> dict[str, str]:
    msg_id = f"msg_{uuid.uuid4().hex}"
    now = datetime.now(UTC)
    return {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, now, body.decode()),
    }


async def freshness(args: argparse.Namespace, env: dict[str, str], tmp: Path) -> None:
    ports = {name: free_port() for name in ("api", "ingest", "compute", "serving")}
    env = {
        **env,
        "KAFKA_TOPIC": f"bench_events_{uuid.uuid4().hex[:8]}",
        "KAFKA_CONSUMER_GROUP": f"bench_compute_{uuid.uuid4().hex[:8]}",
        "API_PORT": str(ports["api"]),
        "INGEST_PORT": str(ports["ingest"]),
        "COMPUTE_PORT": str(ports["compute"]),
        "SERVING_PORT": str(ports["serving"]),
        "INGEST_RATE_LIMIT_PROJECT": "1000000/minute",
        "INGEST_RATE_LIMIT_PIPELINE": "1000000/minute",
    }
    python = sys.executable
    commands = {
        "api": [
            python,
            "-m",
            "uvicorn",
            "main:app",
            "--port",
            str(ports["api"]),
            "--log-level",
            "warning",
        ],
        "ingest": [python, "-m", "runtime.ingestion.main"],
        "compute": [python, "-m", "runtime.compute.main"],
        "serving": [python, "-m", "runtime.serving.main"],
    }
    project_id = f"fresh_{uuid.uuid4().hex[:8]}"
    auth = AuthSettings(secret=SecretStr(env["JWT_SECRET"]))
    headers = {"authorization": f"Bearer {issue_token(auth, 'bench', [project_id])}"}
    url = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    with (
        process(commands["api"], env, tmp / "api.log") as api_p,
        process(commands["ingest"], env, tmp / "ingest.log") as ingest_p,
        process(commands["compute"], env, tmp / "compute.log") as compute_p,
        process(commands["serving"], env, tmp / "serving-fresh.log") as serving_p,
    ):
        for name, child in (("api", api_p), ("ingest", ingest_p), ("serving", serving_p)):
            wait_http(f"{url[name]}/health", child, tmp / f"{name}.log")
        wait_http(f"{url['compute']}/health", compute_p, tmp / "compute.log")
        async with httpx.AsyncClient(headers=headers, timeout=30) as client:
            base = f"{url['api']}/api/v1/projects/{project_id}"
            event = {"name": "add_to_cart", "fields": [{"name": "price", "type": "number"}]}
            created = await client.post(
                f"{base}/pipelines",
                json={"name": "bench", "category": "behavioral", "events": [event]},
            )
            pipeline_id = created.json()["id"]
            await client.post(f"{base}/pipelines/{pipeline_id}/activate")
            feature = {
                "name": "cart_adds",
                "pipeline_id": pipeline_id,
                "source_event": "add_to_cart",
                "aggregation": "COUNT",
                "time_windows": ["1h"],
            }
            assert (await client.post(f"{base}/features", json=feature)).status_code == 201
            assert (await client.post(f"{base}/deployments")).status_code == 201
            secret = (await client.get(f"{base}/pipelines/{pipeline_id}/webhook")).json()["secret"]
            await measure_freshness(args, client, url, project_id, pipeline_id, secret)


async def measure_freshness(
    args: argparse.Namespace,
    client: httpx.AsyncClient,
    url: dict[str, str],
    project_id: str,
    pipeline_id: str,
    secret: str,
) -> None:
    users = [f"shopper-{n}" for n in range(args.fresh_users)]
    sent_count = dict.fromkeys(users, 0)
    pending: dict[str, list[tuple[int, float]]] = {}  # user -> [(target count, accepted at)]
    latencies: list[float] = []
    ingest_path = f"{url['ingest']}/ingest/{project_id}/{pipeline_id}"
    batch_url = f"{url['serving']}/features/{project_id}/users/batch"
    done_sending = asyncio.Event()

    async def send(n: int) -> None:
        user = users[n % len(users)]
        body = json.dumps(
            {"event": "add_to_cart", "user_id": user, "properties": {"price": 1.0}}
        ).encode()
        response = await client.post(ingest_path, content=body, headers=sign_headers(secret, body))
        accepted_at = time.perf_counter()
        if response.status_code != 202:
            raise SystemExit(f"ingestion answered {response.status_code}: {response.text}")
        sent_count[user] += 1
        pending.setdefault(user, []).append((sent_count[user], accepted_at))

    async def sender() -> None:
        # One user's events are sent one after the other, so its counts only grow.
        interval = 1 / args.rate
        started = time.perf_counter()
        total = int(args.rate * args.fresh_seconds)
        for n in range(total):
            delay = started + n * interval - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await send(n)
        done_sending.set()

    async def poller() -> None:
        while not (done_sending.is_set() and not pending):
            waiting = list(pending)
            if waiting:
                response = await client.post(
                    batch_url, json={"user_ids": waiting, "features": ["cart_adds_1h"]}
                )
                seen_at = time.perf_counter()
                for entry in response.json()["users"]:
                    count = entry["features"]["cart_adds_1h"]
                    queue = pending.get(entry["user_id"], [])
                    while queue and queue[0][0] <= count:
                        latencies.append(seen_at - queue.pop(0)[1])
                    if not queue:
                        pending.pop(entry["user_id"], None)
            await asyncio.sleep(0.005)

    # A first event, waited for, so the consumer group has joined before measuring.
    await send(0)
    async with asyncio.timeout(START_BOUND_S):
        while pending:
            response = await client.post(batch_url, json={"user_ids": [users[0]]})
            if response.json()["users"][0]["features"]["cart_adds_1h"] >= 1:
                pending.clear()
            await asyncio.sleep(0.05)
    async with asyncio.timeout(args.fresh_seconds + 60):
        await asyncio.gather(sender(), poller())
    ms = [x * 1000 for x in latencies]
    print(
        f"\nfreshness (202 from ingestion -> visible in serving), {len(ms)} events at "
        f"{args.rate:.0f}/s over {len(users)} users, real Kafka:\n"
        f"  p50 {statistics.median(ms):.1f} ms   p99 {percentile(ms, 0.99):.1f} ms   "
        f"max {max(ms):.1f} ms   (poll resolution ~5 ms + one batch read)"
    )


# -- main ------------------------------------------------------------------------------------
@contextmanager
def own_redis(tmp: Path) -> Iterator[str]:
    port = free_port()
    args = [
        "redis-server",
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(tmp),
    ]
    with process(args, dict(os.environ), tmp / "redis.log") as child:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if child.poll() is not None:
                raise SystemExit("redis-server did not start")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--features", type=int, default=50)
    parser.add_argument(
        "--mix",
        choices=["basic", "recommender"],
        default="basic",
        help="basic: the eight basic aggregations; recommender: also LAST_N, TOP_K, "
        "RECENCY, every other feature filtered",
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="per read scenario")
    parser.add_argument("--rate", type=float, default=50.0, help="freshness events/s")
    parser.add_argument("--fresh-seconds", type=float, default=20.0)
    parser.add_argument("--fresh-users", type=int, default=100)
    parser.add_argument(
        "--before",
        type=Path,
        help="also load the serving process of this checkout (e.g. `git archive` of an "
        "older commit), in turn with ours in every scenario",
    )
    parser.add_argument("--skip-reads", action="store_true")
    parser.add_argument("--skip-freshness", action="store_true")
    parser.add_argument("--serve-bare", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--redis-url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_bare:
        serve_bare(args.serve_bare, args.redis_url)
        return
    with tempfile.TemporaryDirectory(prefix="serving_bench_") as tmp_dir:
        tmp = Path(tmp_dir)
        with own_redis(tmp) as redis_url:
            env = {
                **os.environ,
                "ENVIRONMENT": "production",
                "JWT_SECRET": secrets.token_urlsafe(32),
                "LOG_LEVEL": "WARNING",
                "CONFIG_STORE": "sqlite",
                "CACHE": "redis",
                "EVENT_LOG": "kafka",
                "ONLINE_STORE": "redis",
                "ANALYTICS": "none",
                "REDIS_URL": redis_url,
                "KAFKA_BOOTSTRAP": KAFKA_BOOTSTRAP,
                "DATA_DIR": str(tmp),
            }
            if not args.skip_reads:
                asyncio.run(read_benchmark(args, env, tmp))
            if not args.skip_freshness:
                asyncio.run(freshness(args, env, tmp))


if __name__ == "__main__":
    main()
