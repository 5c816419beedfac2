"""The Feast side of bench/feast_bench.py, run by the Python of Feast's own venv.

    <feast venv>/bin/python bench/feast_side.py REPO_DIR REDIS_PORT USERS

Imports only Feast and its dependencies (never this project, whose pins differ). Writes
a feature repository into REPO_DIR (Redis online store on 127.0.0.1:REDIS_PORT, local
registry file, file offline store), applies one feature view `user_features` of the same
50 values a user has on our side (10 features x 5 windows, typed as our aggregations
are: counts Int64, sums/averages/extremes Float64, last/first String) and writes USERS
users into the online store with `write_to_online_store`. Prints one JSON line with the
feature references a request names.
"""

from __future__ import annotations

import json
import random
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd  # type: ignore[import-untyped]
from feast import (  # type: ignore[import-not-found]
    Entity,
    FeatureStore,
    FeatureView,
    Field,
    FileSource,
    ValueType,
)
from feast.types import Float64, Int64, String  # type: ignore[import-not-found]

# The same feature mix as feast_bench.py's config on our side (bench.common.AGGREGATIONS
# cycled over 10 features, 5 windows each).
AGGREGATIONS = ["count", "sum", "avg", "min", "max", "count_distinct", "last", "first"]
WINDOWS = ["5m", "1h", "24h", "7d", "30d"]
TYPE_OF = {"count": Int64, "count_distinct": Int64, "last": String, "first": String}
CHUNK = 10_000


def columns() -> list[tuple[str, str]]:
    """(column name, aggregation) of the 50 values, in our served keys' order."""
    out = []
    for n in range(10):
        aggregation = AGGREGATIONS[n % len(AGGREGATIONS)]
        out += [(f"f{n:02d}_{aggregation}_{window}", aggregation) for window in WINDOWS]
    return out


def value(aggregation: str, rng: random.Random) -> object:
    if aggregation in ("count", "count_distinct"):
        return rng.randint(0, 12)
    if aggregation in ("last", "first"):
        return f"sku-{rng.randint(1, 40)}"
    return round(rng.uniform(1, 200), 2)


def main() -> None:
    repo, redis_port, users = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    repo.mkdir(parents=True, exist_ok=True)
    (repo / "feature_store.yaml").write_text(
        "project: bench\n"
        f"registry: {repo / 'registry.db'}\n"
        "provider: local\n"
        "online_store:\n"
        "  type: redis\n"
        f"  connection_string: 127.0.0.1:{redis_port}\n"
        "offline_store:\n"
        "  type: file\n"
        "entity_key_serialization_version: 3\n"
    )
    cols = columns()
    now = datetime.now(UTC)
    rng = random.Random(7)
    # The offline source is never read here; apply wants a file with the schema.
    sample = pd.DataFrame(
        [{"user_id": "user-0", "event_timestamp": now, **{c: value(a, rng) for c, a in cols}}]
    )
    sample.to_parquet(repo / "source.parquet")
    user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING)
    view = FeatureView(
        name="user_features",
        entities=[user],
        ttl=timedelta(days=31),
        schema=[Field(name=c, dtype=TYPE_OF.get(a, Float64)) for c, a in cols],
        online=True,
        source=FileSource(path=str(repo / "source.parquet"), timestamp_field="event_timestamp"),
    )
    store = FeatureStore(repo_path=str(repo))
    store.apply([user, view])
    started = time.perf_counter()
    for start in range(0, users, CHUNK):
        rows = [
            {"user_id": f"user-{n}", "event_timestamp": now, **{c: value(a, rng) for c, a in cols}}
            for n in range(start, min(users, start + CHUNK))
        ]
        store.write_to_online_store("user_features", pd.DataFrame(rows))
    print(
        json.dumps(
            {
                "features": [f"user_features:{c}" for c, _ in cols],
                "write_seconds": round(time.perf_counter() - started, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
