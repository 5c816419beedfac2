"""Prometheus metrics of the serving runtime, on a registry owned by one app.

A registry per app (not the process-global one) lets tests and the standalone process
build several apps in one interpreter without "duplicated timeseries" errors.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram

# Store reads are sub-millisecond on a local Redis; the buckets resolve that range and
# still show a slow remote store.
_READ_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
_BATCH_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000)


@dataclass
class ServingMetrics:
    """The serving runtime's instruments, registered on `registry`."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.requests = Counter(
            "serving_requests",
            "Feature read requests handled, by endpoint and HTTP status",
            ("endpoint", "status"),
            registry=self.registry,
        )
        self.store_read_seconds = Histogram(
            "serving_store_read_seconds",
            "Latency of one online store read (get: one user, get_many: one batch)",
            ("op",),
            buckets=_READ_BUCKETS,
            registry=self.registry,
        )
        self.batch_users = Histogram(
            "serving_batch_users",
            "User ids per batch request (duplicates included)",
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
