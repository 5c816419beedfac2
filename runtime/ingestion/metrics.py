"""Prometheus metrics of the ingestion runtime, on a registry owned by one app.

A registry per app (not the process-global one) lets tests and the standalone process
build several apps in one interpreter without "duplicated timeseries" errors. No label
carries a project or pipeline id taken from the URL: unknown ids would let any caller
grow the series without bound.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import generate_latest

# A local broker acknowledges in a few ms; a replicated one with acks=all in tens.
_PRODUCE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


@dataclass
class IngestionMetrics:
    """The ingestion runtime's instruments, registered on `registry`."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.accepted = Counter(
            "ingest_events_accepted",
            "Events acknowledged by the event log and answered with 2xx",
            registry=self.registry,
        )
        self.deduplicated = Counter(
            "ingest_events_deduplicated",
            "Events acknowledged but not produced again (event id seen in the last 24 h, "
            "or repeated within one batch)",
            registry=self.registry,
        )
        self.late = Counter(
            "ingest_events_late",
            "Accepted events older than every window they feed: archived, counted in no feature",
            registry=self.registry,
        )
        self.rejected_requests = Counter(
            "ingest_requests_rejected",
            "Requests answered with an error, by error name (InvalidSignature, ...)",
            ("reason",),
            registry=self.registry,
        )
        self.rejected_events = Counter(
            "ingest_batch_events_rejected",
            "Items of accepted batches that were rejected, by error name",
            ("reason",),
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "ingest_requests_rate_limited",
            "Requests refused by a rate limit, by the limit that refused (project, pipeline)",
            ("scope",),
            registry=self.registry,
        )
        self.claims_unconfirmed = Counter(
            "ingest_claims_unconfirmed",
            "Dedup/replay claims of produced events that could not be marked done (cache "
            "down after the produce): a retry after they expire is produced again",
            registry=self.registry,
        )
        self.claims_unreleased = Counter(
            "ingest_claims_unreleased",
            "Claims of refused or failed requests that could not be released (cache down): "
            "their retries get 409 EventInFlight until the claims expire",
            registry=self.registry,
        )
        self.cache_calls = Counter(
            "ingest_cache_calls",
            "Admission calls to the cache (one Redis round trip each, carrying the requests "
            "that arrived meanwhile and the confirms queued before them) and confirm calls "
            "(confirms that found no admission to ride on): per event, the round trips paid",
            ("call",),
            registry=self.registry,
        )
        self.produce_seconds = Histogram(
            "ingest_produce_seconds",
            "Time until the event log acknowledged one request's records",
            buckets=_PRODUCE_BUCKETS,
            registry=self.registry,
        )


def metrics_router(registry: CollectorRegistry) -> APIRouter:
    """Returns a router with `GET /metrics` exposing `registry` in Prometheus text format."""
    router = APIRouter(tags=["health"])

    @router.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return router
