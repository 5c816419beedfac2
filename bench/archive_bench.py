"""Event archive benchmark (not a test): a rebuild and a training set over N synthetic
archived events in chDB, against a plain `SELECT count()` over the same rows.

    .venv/bin/python bench/archive_bench.py [--events 10000000] [--users 20000]
        [--rows 10000] [--rounds 1] [--mix recommender|basic]

The events are generated inside chDB (`INSERT ... SELECT FROM numbers(N)`, 1% of them
inserted twice as second copies), spread over 8 days, of `--users` users, three event
kinds, a product id and a price each. The config (`--mix recommender`, the default) has
one feature per aggregation (11: COUNT ... LAST_N, TOP_K, RECENCY; every other one
filtered on price), each over 1h, 24h and 7d; `--mix basic` has the first 8 unfiltered.
Printed, as medians of `--rounds` (the plain count is measured before and after the
other figures, and the median of all those runs is the reference):

- `count()` over the project's rows (no dedup), and `count()` with `FINAL` (deduped);
- a training set of `--rows` random (user, timestamp) rows, every feature;
- a rebuild of every user into a SQLite online store (SQL partials per tile, Python
  assembly, one put_many per chunk of users);
and each as a ratio to the plain count: how many full scans of the archive it costs.
The machine's load (`os.getloadavg`) is printed at the start and at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.core.settings import BackendSettings
from app.db import factory
from app.db.clickhouse import ChdbSink
from app.services.rebuild_service import RebuildService
from app.services.training_set_service import TrainingRow, TrainingSetService
from bench.common import feature_snapshot

PROJECT = "bench"
PIPELINE = "0" * 24
DAY_MS = 86_400_000

_INSERT = """
INSERT INTO event_archive (project_id, pipeline_id, user_id, event, event_id, event_time,
                           received_at, properties, log_partition, log_offset)
SELECT '{project}', '{pipeline}', concat('u', toString(number % {users})),
       ['add_to_cart', 'page_view', 'purchase'][number % 3 + 1],
       concat('e', toString(number)),
       fromUnixTimestamp64Milli(toInt64({now} - cityHash64(number) % {span})),
       fromUnixTimestamp64Milli(toInt64({now} - cityHash64(number) % {span})),
       concat('{{"product_id":"sku-', toString(cityHash64(number, 1) % 50),
              '","price":', toString((cityHash64(number, 2) % 10000) / 100), '}}'),
       number % 12, intDiv(number, 12) + {offset}
FROM numbers({events}) WHERE {where}
"""


async def median_s(rounds: int, work: Callable[[], Awaitable[object]]) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        await work()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


async def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="archive-bench-") as tmp:
        settings = BackendSettings(
            data_dir=Path(tmp), analytics="chdb", online_store="sqlite", archive_retention_days=400
        )
        archive = ChdbSink(settings)
        await archive.initialize()
        store = factory.make_online_store(settings)
        await store.initialize()
        try:
            now = time.time_ns() // 1_000_000 // 60_000 * 60_000
            fill = {"project": PROJECT, "pipeline": PIPELINE, "users": args.users, "now": now}
            fill |= {"span": 8 * DAY_MS, "events": args.events}
            started = time.perf_counter()
            await archive.command(_INSERT.format(**fill, offset=0, where="1"))
            # Second copies of 1% of the events, later in the log (a producer retry).
            await archive.command(
                _INSERT.format(**fill, offset=args.events, where="number % 100 = 0")
            )
            print(
                f"inserted {args.events:,} events (+1% copies) in "
                f"{time.perf_counter() - started:.1f} s"
            )

            def count(final: str) -> Callable[[], Awaitable[object]]:
                sql = f"SELECT count() FROM event_archive {final} WHERE project_id = 'bench'"  # noqa: S608
                return lambda: archive.query_rows(sql)

            print(f"load average at start: {os.getloadavg()}")
            plains = [await median_s(1, count("")) for _ in range(3)]

            def report(name: str, seconds: float) -> None:
                # Printed as soon as measured, against the plain counts so far.
                plain = statistics.median(plains)
                print(
                    f"{name:<28} {seconds * 1000:11.1f} ms {seconds / plain:9.1f}x "
                    f"(plain count() median {plain * 1000:.1f} ms of {len(plains)}; "
                    f"load {os.getloadavg()[0]:.1f})",
                    flush=True,
                )

            report("count() plain", statistics.median(plains))
            report("count() FINAL", await median_s(args.rounds, count("FINAL")))
            rows_total = (
                await archive.query_rows(
                    "SELECT count() FROM event_archive FINAL WHERE project_id = 'bench'"
                )
            )[0][0]
            print(f"events (deduped): {rows_total:,}; users: {args.users:,}", flush=True)

            recommender = args.mix == "recommender"
            snapshot = feature_snapshot(
                PROJECT,
                PIPELINE,
                11 if recommender else 8,
                ["1h", "24h", "7d"],
                pipeline_name="bench",
                recommender=recommender,
            )
            rng = random.Random(1)
            rows = [
                TrainingRow(f"u{rng.randrange(args.users)}", now - rng.randrange(7 * DAY_MS))
                for _ in range(args.rows)
            ]
            if "train" in args.parts:
                training = TrainingSetService(archive)
                train = await median_s(args.rounds, lambda: training.build(snapshot, rows))
                plains += [await median_s(1, count("")) for _ in range(3)]
                report(f"training set {args.rows:,} rows", train)
            if "rebuild" in args.parts:
                rebuild_service = RebuildService(archive, store, now_ms=lambda: now)
                rebuilt = await median_s(args.rounds, lambda: rebuild_service.rebuild(snapshot))
                plains += [await median_s(1, count("")) for _ in range(3)]
                report(f"rebuild {args.users:,} users", rebuilt)
            print(f"plain count() runs (ms): {[round(p * 1000, 1) for p in plains]}")
            print(f"load average at end: {os.getloadavg()}")
        finally:
            await store.close()
            await archive.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--mix", choices=["recommender", "basic"], default="recommender")
    parser.add_argument(
        "--parts", nargs="+", choices=["train", "rebuild"], default=["train", "rebuild"]
    )
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
