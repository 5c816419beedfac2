"""Prometheus metrics of the compute runtime, on a registry of their own.

One registry per app (not the global default), so several apps in one process (tests,
the standalone process) never collide and /metrics shows exactly this worker's series.
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Store round trips on a loopback Redis take ~0.1-1 ms; a remote Aerospike a few ms.
_WRITE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ComputeMetrics:
    """Every series the worker updates."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.consumer_lag = Gauge(
            "compute_consumer_lag",
            "Records of the partition not yet consumed by this worker",
            ["partition"],
            registry=r,
        )
        self.events_applied = Counter(
            "compute_events_applied_total",
            "Events applied to user records (rate() gives events/s)",
            registry=r,
        )
        self.events_late = Counter(
            "compute_events_late_total",
            "Events older than every window of the features they feed: skipped",
            registry=r,
        )
        self.events_future = Counter(
            "compute_events_future_total",
            "Events stamped too far ahead of compute's clock: skipped",
            registry=r,
        )
        self.events_duplicate = Counter(
            "compute_events_duplicate_total",
            "Events the record had already applied (redelivery or second copy): skipped",
            registry=r,
        )
        self.events_duplicate_id = Counter(
            "compute_events_duplicate_id_total",
            "Second copies of an event, caught by the event ids a record remembers "
            "(part of compute_events_duplicate_total)",
            registry=r,
        )
        self.dedup_ids_forgotten = Counter(
            "compute_dedup_ids_forgotten_total",
            "Event ids dropped before the dedup horizon to keep a record under "
            "COMPUTE_DEDUP_MAX_IDS (a copy of one of those would count again)",
            registry=r,
        )
        self.project_delay = Gauge(
            "compute_project_delay_seconds",
            "Per project, how long the oldest event of the last stored batch waited between "
            "ingestion's receipt and its store write: the pipeline's lag for that tenant",
            ["project_id"],
            registry=r,
        )
        self.events_parked = Counter(
            "compute_events_parked_total",
            "Events that can never be applied or stored, sent to the dead-letter log",
            ["reason"],
            registry=r,
        )
        self.events_no_config = Counter(
            "compute_events_no_config_total",
            "Events of projects without a deployed config: skipped",
            registry=r,
        )
        self.events_without_features = Counter(
            "compute_events_without_features_total",
            "Events of projects whose deployed config has no runnable feature",
            registry=r,
        )
        self.decode_errors = Counter(
            "compute_decode_errors_total",
            "Records that are not an event message: skipped",
            registry=r,
        )
        self.batches = Counter("compute_batches_total", "Batches stored and committed", registry=r)
        self.batch_retries = Counter(
            "compute_batch_retries_total",
            "Batch attempts that failed (store or config unavailable) and were retried",
            registry=r,
        )
        self.commit_failures = Counter(
            "compute_commit_failures_total",
            "Offset commits that failed after the store write (harmless: redelivery is skipped)",
            registry=r,
        )
        self.store_write_seconds = Histogram(
            "compute_store_write_seconds",
            "Latency of one user record write (compare-and-set put)",
            buckets=_WRITE_BUCKETS,
            registry=r,
        )
        self.store_conflicts = Counter(
            "compute_store_conflicts_total",
            "Writes refused because the record changed since it was read (re-read, re-applied)",
            registry=r,
        )
        self.invalid_features = Counter(
            "compute_invalid_features_total",
            "Deployed features compute could not build (per config version seen)",
            registry=r,
        )
        self.entity_writes = Counter(
            "compute_entity_writes_total",
            "Per-entity records written (one per entity id per batch, whatever its events)",
            registry=r,
        )
        self.entity_conflicts = Counter(
            "compute_entity_conflicts_total",
            "Per-entity record writes refused because another worker wrote it first "
            "(re-read, re-applied)",
            registry=r,
        )
        self.pair_keys_dropped = Counter(
            "compute_pair_keys_dropped_total",
            "Key values a user x entity feature dropped to keep MAX_KEYS_PER_USER per user",
            registry=r,
        )
        self._lag_partitions: set[str] = set()

    def set_lag(self, lag: Mapping[int, int]) -> None:
        """Replaces the per-partition lag series; partitions no longer assigned vanish."""
        current = {str(p) for p in lag}
        for gone in self._lag_partitions - current:
            self.consumer_lag.remove(gone)
        for partition, value in lag.items():
            self.consumer_lag.labels(partition=str(partition)).set(value)
        self._lag_partitions = current
