"""Shared fixtures: where the real servers are, and settings that point at them.

`scripts/servers.sh start` (run by `make test`) starts Kafka, FerretDB and Redis on
127.0.0.1; the addresses come from the environment so the same suite also runs against
docker-compose services. A server that should be there and is not fails the test: only
Aerospike, which cannot be installed here, is skipped when AEROSPIKE_HOSTS is unset.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from app.core.settings import BackendSettings

# Backend fixtures (config stores, Redis, project ids) shared by every test folder.
pytest_plugins = ["tests.support.stores"]

KAFKA_BOOTSTRAP = os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:39092")
MONGODB_URL = os.environ.get("MONGODB_URL", "mongodb://127.0.0.1:37017/")
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:36379/0")
AEROSPIKE_HOSTS = os.environ.get("AEROSPIKE_HOSTS")
CLICKHOUSE_URL = os.environ.get("CLICKHOUSE_URL")

requires_aerospike = pytest.mark.skipif(
    not AEROSPIKE_HOSTS,
    reason="AEROSPIKE_HOSTS is not set: no Aerospike server can be installed on this machine; "
    "set it (e.g. 127.0.0.1:3000) to run the Aerospike contract tests",
)


def unique(prefix: str) -> str:
    """A name no other test (or earlier run against the same servers) uses."""
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def tmp_data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path


@pytest.fixture
def backend_settings(tmp_data_dir: Path) -> BackendSettings:
    """Backends pointing at the real test servers, with names unique to the test."""
    return BackendSettings(
        mongodb_url=MONGODB_URL,
        mongodb_database=unique("dps_test"),
        # A loaded CI machine can be slower than the 2 s production budget while the
        # store is healthy; the outage tests run their own processes with the default.
        mongodb_call_budget_s=15.0,
        kafka_bootstrap=KAFKA_BOOTSTRAP,
        kafka_topic=unique("events"),
        kafka_consumer_group=unique("group"),
        redis_url=REDIS_URL,
        aerospike_hosts=AEROSPIKE_HOSTS or "127.0.0.1:3000",
        clickhouse_url=CLICKHOUSE_URL or "http://127.0.0.1:8123/",
        data_dir=tmp_data_dir,
    )
