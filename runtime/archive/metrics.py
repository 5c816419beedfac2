"""Prometheus metrics of the archive runtime, on a registry of their own."""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge


class ArchiveMetrics:
    """Every series the archive worker updates."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.consumer_lag = Gauge(
            "archive_consumer_lag",
            "Records of the partition not yet archived",
            ["partition"],
            registry=r,
        )
        self.events_archived = Counter(
            "archive_events_inserted_total",
            "Event records inserted (a redelivered or second copy is inserted again and "
            "stored once)",
            registry=r,
        )
        self.decode_errors = Counter(
            "archive_decode_errors_total",
            "Records that are not event messages: skipped (compute parks them)",
            registry=r,
        )
        self.insert_failures = Counter(
            "archive_insert_failures_total",
            "Failed inserts (the batch is kept and retried, nothing is committed)",
            registry=r,
        )
        self.batches = Counter(
            "archive_batches_committed_total", "Batches inserted and committed", registry=r
        )
        self.commit_failures = Counter(
            "archive_commit_failures_total",
            "Offset commits that failed after the insert (the batch comes again; stored once)",
            registry=r,
        )

    def set_lag(self, lag: Mapping[int, int]) -> None:
        """Sets the lag gauge per partition."""
        for partition, value in lag.items():
            self.consumer_lag.labels(partition=str(partition)).set(value)
