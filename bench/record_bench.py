"""Record size benchmark (not a test): bytes per user and codec CPU, JSON before vs now.

    .venv/bin/python bench/record_bench.py [--rounds 30]

No server needed: records are built by the compute code itself (`record.apply_batch`)
for 20 features x 5 windows (5m 1h 24h 7d 30d) over the eight basic aggregations, the
features of compute_bench's size figures, with event ids as Kafka delivers them.

Users, by events in the last 30 days (spread at random over them; each hour's events
applied together a second after the last, so ids are remembered as in production):

    light 3, regular 30, active 300, heavy 3,000, and the two of compute_bench:
    10,000 events ~5 minutes apart (the README's 151 KB), and the worst case, 40,000
    events ~1 minute apart (every tile of every window filled, sketches included);
    and for CPU also serving_bench's record: 50 features, ~10 events in two weeks.

Printed per user class: bytes stored before (the record as one compact JSON, ids
inside, as every store kept it) and now (`codec.encode_record`: the tiles blob that
serving reads, the ids blob only compute reads), before / now, and the weighted mean
of the realistic mix MIX (most users a handful of events a month, a few thousands).
Then the CPU of one encode and one decode per class, now / before, each the least of
`--rounds` runs alternated A/B (the machine is shared; `uptime` is printed with them):
encode is what compute pays per write, decode without ids what serving pays per read,
decode with ids what compute pays per read.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

# Run as a script (`make bench`): the repository root is not on sys.path by itself.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pydantic_core import from_json, to_json

from app.tiles.codec import decode_record, encode_record
from app.tiles.record import AppliedEvent, apply_batch
from bench.common import EVENT_NAMES, feature_snapshot
from runtime.compute.specs import build_specs, event_key

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
END_MS = 1_790_000_000_000
# (class, events, span of event time): 30 days, or the span compute_bench's gaps give.
CLASSES = [
    ("light", 3, 30 * DAY_MS),
    ("regular", 30, 30 * DAY_MS),
    ("active", 300, 30 * DAY_MS),
    ("heavy", 3_000, 30 * DAY_MS),
    ("10k, 5 min apart", 10_000, 10_000 * 300_000),
    ("worst, 1 min apart", 40_000, 40_000 * 60_000),
]
# serving_bench's records: 50 features, ~10 events over two weeks (not in the mix).
SERVING = ("serving_bench's", 10, 14 * DAY_MS)
# Share of users per class in the realistic mix.
MIX = {"light": 0.80, "regular": 0.15, "active": 0.04, "heavy": 0.01}


def build_record(events: int, span_ms: int, features: int = 20, seed: int = 1) -> dict[str, Any]:
    """One user's record after `events` events spread at random over `span_ms`, applied
    as compute applies them: each hour's events in one batch, a second after the last
    (so the remembered ids are those of the last 24 hours, as in production)."""
    snapshot = feature_snapshot(
        "bench", "pipeline", features, ["5m", "1h", "24h", "7d", "30d"], pipeline_name="bench"
    )
    specs = build_specs(snapshot)
    rng = random.Random(seed)
    times = sorted(END_MS - rng.randrange(span_ms) for _ in range(events))
    hours: dict[int, list[AppliedEvent]] = {}
    for i, t_ms in enumerate(times):
        properties = {
            "product_id": f"sku-{rng.randrange(1000)}",
            "price": rng.randrange(100, 20_000) / 100,
        }
        name = event_key("pipeline", EVENT_NAMES[i % len(EVENT_NAMES)])
        event = AppliedEvent(0, i, name, t_ms, properties, f"evt-{seed}-{i}")
        hours.setdefault(t_ms // HOUR_MS, []).append(event)
    record = None
    for batch in hours.values():
        record = apply_batch(record, specs.by_event, batch, batch[-1].t_ms + 1_000).record
    assert record is not None
    return record


def least_of(rounds: int, a: Callable[[], Any], b: Callable[[], Any]) -> tuple[float, float]:
    """The least CPU seconds of one call of `a` and of `b` over `rounds` runs, alternated
    (process CPU time, so time spent descheduled on the shared machine is not counted;
    each run repeats the call until it took a millisecond, for the clock's resolution)."""
    best_a = best_b = float("inf")
    calls = max(1, int(1e-3 / max(_once(a), _once(b), 1e-7)))
    for _ in range(rounds):
        best_a = min(best_a, _cpu(a, calls))
        best_b = min(best_b, _cpu(b, calls))
    return best_a, best_b


def _once(fn: Callable[[], Any]) -> float:
    started = time.process_time()
    fn()
    return time.process_time() - started


def _cpu(fn: Callable[[], Any], calls: int) -> float:
    started = time.process_time()
    for _ in range(calls):
        fn()
    return (time.process_time() - started) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()

    records = {name: build_record(events, span) for name, events, span in CLASSES}
    records[SERVING[0]] = build_record(SERVING[1], SERVING[2], features=50)
    print("bytes per user: 20 features x 5 windows (5m 1h 24h 7d 30d), 8 aggregations")
    print(
        f"  {'user':20} {'events':>6} {'JSON before':>11} {'tiles now':>9} {'ids now':>8}"
        f" {'before/tiles':>12} {'before/all':>10}"
    )
    sizes: dict[str, tuple[int, int, int]] = {}
    for name, events, _ in CLASSES:
        record = records[name]
        before = len(to_json(record))
        tiles, ids = encode_record(record)
        assert decode_record(tiles, ids) == record
        sizes[name] = (before, len(tiles), len(ids))
        print(
            f"  {name:20} {events:6d} {before:11d} {len(tiles):9d} {len(ids):8d}"
            f" {before / len(tiles):11.1f}x {before / (len(tiles) + len(ids)):9.1f}x"
        )
    mean = [sum(MIX[n] * sizes[n][i] for n in MIX) for i in range(3)]
    mix = ", ".join(f"{share:.0%} {name}" for name, share in MIX.items())
    print(
        f"  {'realistic mix':20} {'':6} {mean[0]:11.0f} {mean[1]:9.0f} {mean[2]:8.0f}"
        f" {mean[0] / mean[1]:11.1f}x {mean[0] / (mean[1] + mean[2]):9.1f}x   ({mix})"
    )

    print(f"codec CPU, now / before (least of {args.rounds} alternated runs; load {_load()})")
    print(
        f"  {'user':20} {'encode':>8} {'decode, serving':>16} {'decode, compute':>16}"
        f" {'JSON enc ms':>11} {'JSON dec ms':>11}"
    )
    for name, _, _ in [*CLASSES, SERVING]:
        record = records[name]
        as_json = to_json(record)
        tiles, ids = encode_record(record)
        enc_before, enc_now = least_of(
            args.rounds, partial(to_json, record), partial(encode_record, record)
        )
        dec_before, dec_serving = least_of(
            args.rounds, partial(from_json, as_json), partial(decode_record, tiles)
        )
        _, dec_compute = least_of(
            args.rounds, partial(from_json, as_json), partial(decode_record, tiles, ids)
        )
        print(
            f"  {name:20} {enc_now / enc_before:7.2f}x {dec_serving / dec_before:15.2f}x"
            f" {dec_compute / dec_before:15.2f}x {enc_before * 1e3:11.3f} {dec_before * 1e3:11.3f}"
        )


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


if __name__ == "__main__":
    main()
