"""Online store benchmark (not a test): the time of one 500-record batch write, the call
compute makes per chunk of users (`FeatureWriter`'s WRITE_CHUNK).

    .venv/bin/python bench/online_store_bench.py [--records 500] [--rounds 15]

Needs Redis (`scripts/servers.sh start`, REDIS_URL). With AEROSPIKE_HOSTS set it also
measures Aerospike; without it says so and skips those lines (no Aerospike server can be
installed by the project's scripts: see ../shared/aerospike/ for a built one).

Each round writes `--records` records of ~10 KB (10 features x 5 windows x 6 tiles,
the size compute writes) to a fresh project: `put_many` creating them, then `put_many`
updating them with the generations just read (the read is not timed). Printed: the
median time of each kind of call per store, and the ratios:
- Aerospike `put_many` (one batch_write) / Redis `put_many` (one pipeline);
- Aerospike one `operate()` per record through the thread pool (the interface's default
  `put_many`, what the store did before batch writes) / Aerospike `put_many`;
- Redis with an append-only file fsynced every second / Redis without persistence, on
  two private redis-servers the bench starts and stops (by their own handles), for the
  cost of the durable setting of scripts/redis.sh and docker-compose.yml.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

# Run as a script (`make bench`): the repository root is not on sys.path by itself.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.core.settings import BackendSettings
from app.db.factory import make_online_store
from app.db.online_store import OnlineStore, RecordWrite
from bench.common import free_port, process, wait_port
from tests.support.online import DelegatingStore

WINDOWS = ["5m", "1h", "24h", "7d", "30d"]


def a_record(seed: int) -> dict[str, Any]:
    """~10 KB of JSON: 10 features x 5 windows x 6 tiles."""
    base = 1_700_000_000_000
    return {
        "features": {
            f"feature_{f}": {
                "fp": f"fp{f}",
                "w": {
                    w: {str(base + t * 60_000): {"c": t + seed, "s": t * 1.5} for t in range(6)}
                    for w in WINDOWS
                },
            }
            for f in range(10)
        },
        "offsets": {str(p): 10_000 + p for p in range(12)},
        "updated_ms": base + seed,
    }


async def measure(store: OnlineStore, records: int, rounds: int) -> tuple[float, float]:
    """Returns the median seconds of a creating and of an updating `put_many`."""
    users = [f"user-{i}" for i in range(records)]
    creates: list[float] = []
    updates: list[float] = []
    for _ in range(rounds):
        project = f"bench_{uuid.uuid4().hex[:10]}"
        writes = [RecordWrite(u, a_record(i), None) for i, u in enumerate(users)]
        started = time.perf_counter()
        results = await store.put_many(project, writes, 600)
        creates.append(time.perf_counter() - started)
        assert results == [None] * records, "a create conflicted"
        current = await store.get_many(project, users)
        writes = [
            RecordWrite(u, a_record(i + 1), s.generation)
            for i, (u, s) in enumerate(zip(users, current, strict=True))
            if s is not None
        ]
        started = time.perf_counter()
        results = await store.put_many(project, writes, 600)
        updates.append(time.perf_counter() - started)
        assert results == [None] * records, "an update conflicted"
    return statistics.median(creates), statistics.median(updates)


async def timed(settings: BackendSettings, records: int, rounds: int, per_record: bool) -> float:
    store = make_online_store(settings)
    await store.initialize()
    try:
        # DelegatingStore keeps the interface's default put_many: one put per record.
        measured = DelegatingStore(store) if per_record else store
        await measure(measured, records, 1)  # warm-up: connections, script load
        create_s, update_s = await measure(measured, records, rounds)
    finally:
        await store.close()
    print(f"    create {create_s * 1000:7.1f} ms   update {update_s * 1000:7.1f} ms")
    return (create_s + update_s) / 2


async def private_redis(records: int, rounds: int, aof: bool) -> float:
    """Measures put_many on a redis-server of the bench's own, with or without AOF."""
    port = free_port()
    data = Path(tempfile.mkdtemp(prefix="dps-bench-redis-"))
    persistence = ["--appendonly", "yes", "--appendfsync", "everysec"] if aof else []
    args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    args += ["--appendonly", "no", *persistence, "--dir", str(data)]
    try:
        with process(args, dict(os.environ), data / "redis.log") as child:
            wait_port(port, child, data / "redis.log")
            settings = BackendSettings(
                online_store="redis", redis_url=f"redis://127.0.0.1:{port}/0"
            )
            return await timed(settings, records, rounds, per_record=False)
    finally:
        shutil.rmtree(data, ignore_errors=True)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    n, rounds = args.records, args.rounds
    print(f"online store: {n} records of ~10 KB per put_many, median of {rounds} rounds")

    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:36379/0")
    print(f"Redis put_many (one pipeline), {redis_url}")
    redis_s = await timed(
        BackendSettings(online_store="redis", redis_url=redis_url), n, rounds, per_record=False
    )

    hosts = os.environ.get("AEROSPIKE_HOSTS")
    if hosts:
        settings = BackendSettings(online_store="aerospike", aerospike_hosts=hosts)
        print(f"Aerospike put_many (one batch_write), {hosts}")
        batch_s = await timed(settings, n, rounds, per_record=False)
        print("Aerospike one operate() per record (the store before batch writes)")
        single_s = await timed(settings, n, rounds, per_record=True)
        print(f"ratio Aerospike batch / Redis pipeline:        {batch_s / redis_s:5.2f}")
        print(f"ratio Aerospike per-record / Aerospike batch:  {single_s / batch_s:5.2f}")
    else:
        print("Aerospike: skipped (AEROSPIKE_HOSTS is not set)")

    if shutil.which("redis-server"):
        print("private Redis, no persistence")
        plain_s = await private_redis(n, rounds, aof=False)
        print("private Redis, appendonly yes, appendfsync everysec")
        aof_s = await private_redis(n, rounds, aof=True)
        print(f"ratio Redis AOF everysec / no persistence:     {aof_s / plain_s:5.2f}")
    else:
        print("Redis AOF cost: skipped (no redis-server on PATH)")


if __name__ == "__main__":
    asyncio.run(main())
