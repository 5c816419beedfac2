"""Settings: one class per process on a shared base.

Shared concerns (which backend of each kind, where the servers are, how tokens are
checked) are read from unprefixed environment variables (`CONFIG_STORE`,
`MONGODB_URL`, `JWT_SECRET`...) so one env file wires every process the same way.
Process-specific knobs (port, limits) carry the process's prefix (`API_`, `INGEST_`,
`COMPUTE_`, `SERVING_`, `STANDALONE_`).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal, Self

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Environment = Literal["production", "development"]
ConfigStoreKind = Literal["mongodb", "sqlite"]
EventLogKind = Literal["kafka", "local"]
OnlineStoreKind = Literal["aerospike", "redis", "sqlite"]
AnalyticsKind = Literal["none", "clickhouse", "chdb"]
CacheKind = Literal["redis", "memory"]

# Between claiming an event and producing it, ingestion charges the rate limits (two
# Redis calls, a few seconds at worst when Redis is failing).
CLAIM_MARGIN_SECONDS = 10

# Secrets that ship in examples and docs; a production process refuses them.
_KNOWN_DEV_SECRETS = frozenset({"changethis", "dev-secret", "secret", "standalone-dev-secret"})


# The events topic's partition count unless KAFKA_PARTITIONS says otherwise.
KAFKA_DEFAULT_PARTITIONS = 12


class BackendSettings(BaseSettings):
    """Which implementation serves each backend kind, and where its server is."""

    model_config = SettingsConfigDict(extra="ignore")

    config_store: ConfigStoreKind = "mongodb"
    event_log: EventLogKind = "kafka"
    online_store: OnlineStoreKind = "redis"
    analytics: AnalyticsKind = "none"
    cache: CacheKind = "redis"

    mongodb_url: str = "mongodb://127.0.0.1:27017/"
    mongodb_database: str = "dataplatform"
    # A config-store call not answered within this is a 503 (the server is down or
    # stalled). Raise it where a healthy store can be slower (a loaded test machine).
    mongodb_call_budget_s: float = Field(default=2.0, gt=0)
    kafka_bootstrap: str = "127.0.0.1:9092"
    kafka_topic: str = "events"
    # Where compute parks events it can never apply (with the reason), so the rest flows.
    kafka_dead_letter_topic: str = "events.dead-letter"
    kafka_consumer_group: str = "dps-compute"
    # Partitions of the events topic when a process creates it (an existing topic keeps
    # its own count). Each partition is read by one compute at a time, so this caps how
    # many computes share the work: pick 2-4x the replicas you expect to run. More later
    # is possible (kafka-topics --alter) but moves keys to other partitions; fewer is not.
    kafka_partitions: int = Field(default=KAFKA_DEFAULT_PARTITIONS, ge=1)
    # How often clients refresh the cluster metadata: partitions added to the topic are
    # read (and written) only after the next refresh. One small request per client per
    # period; Kafka's default is 5 minutes.
    kafka_metadata_max_age_ms: int = Field(default=15_000, ge=1_000)
    # Group membership (compute). A compute that dies without leaving the group keeps its
    # partitions until the broker has missed its heartbeats for the session timeout, then
    # the others take them over (plus a rebalance, about a heartbeat). 6 s is the broker's
    # default floor (group.min.session.timeout.ms); heartbeats every 1 s leave room for
    # a few lost ones (Kafka's rule: at most a third of the session).
    kafka_session_timeout_ms: int = Field(default=6_000, ge=1_000)
    kafka_heartbeat_interval_ms: int = Field(default=1_000, ge=100)
    # Static membership (KIP-345): a stable, unique name per compute replica (e.g. a
    # StatefulSet pod name). A restarted compute that comes back within the session
    # timeout gets its partitions again without a rebalance of the whole group; but a
    # static member never leaves the group, so its partitions also wait out the session
    # timeout on a clean stop. Unset: dynamic membership (a clean stop hands partitions
    # over at once). Two replicas must never share a name (the broker fences one).
    kafka_group_instance_id: str | None = None
    redis_url: str = "redis://127.0.0.1:6379/0"
    aerospike_hosts: str = "127.0.0.1:3000"
    aerospike_namespace: str = "features"
    # A local read takes about a millisecond: a node silent for the socket timeout is
    # dead or stalled and the attempt is retried (twice); past the total the read fails
    # (serving answers 503) instead of holding the request. Batch reads carry up to a
    # few thousand records (compute) and get a longer total, the same idle bound.
    aerospike_read_timeout_ms: int = Field(default=100, gt=0)
    aerospike_batch_read_timeout_ms: int = Field(default=1000, gt=0)
    aerospike_socket_timeout_ms: int = Field(default=50, gt=0)
    aerospike_write_timeout_ms: int = Field(default=2000, gt=0)
    # How long start-up keeps retrying a cluster that does not accept requests yet.
    aerospike_startup_timeout_s: float = Field(default=30.0, ge=0)
    clickhouse_url: str = "http://127.0.0.1:8123/"
    # Archived events are kept this long after their event time (a ClickHouse TTL).
    # At least the longest window (90 days), or a rebuild could not refill it.
    archive_retention_days: int = Field(default=400, ge=90)
    # Embedded backends (standalone) keep their files here.
    data_dir: Path = Path("./data")

    @model_validator(mode="after")
    def _heartbeats_fit_the_session(self) -> Self:
        if 3 * self.kafka_heartbeat_interval_ms > self.kafka_session_timeout_ms:
            raise ValueError(
                "KAFKA_HEARTBEAT_INTERVAL_MS must be at most a third of "
                "KAFKA_SESSION_TIMEOUT_MS (a member must survive a lost heartbeat)"
            )
        return self


class AuthSettings(BaseSettings):
    """How bearer tokens from the Identity Service are verified."""

    model_config = SettingsConfigDict(env_prefix="JWT_", extra="ignore")

    algorithm: Literal["HS256", "RS256"] = "HS256"
    secret: SecretStr | None = None
    public_key: str | None = None
    issuer: str | None = None
    audience: str | None = None


class ServiceSettings(BaseSettings):
    """The base every process's settings class extends."""

    model_config = SettingsConfigDict(extra="ignore")

    environment: Environment = Field(default="production", validation_alias="ENVIRONMENT")
    auth_disabled: bool = Field(default=False, validation_alias="AUTH_DISABLED")
    log_level: str = Field(default="INFO", validation_alias="LOG_LEVEL")
    backends: BackendSettings = Field(default_factory=BackendSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)

    host: str = "127.0.0.1"
    port: int = 8000
    # Limits checked before any parsing or auth (app/core/limits.py, app/core/server.py):
    # a body past max_body_bytes is 413 (counted while streaming, whatever Content-Length
    # says); a request line plus headers past max_header_bytes is 431. Ingestion's body
    # limit defaults to its INGEST_MAX_BATCH_BYTES.
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    max_header_bytes: int = Field(default=64 * 1024, ge=8 * 1024)

    # Whether the process verifies bearer tokens (it has routes behind `get_principal`).
    # Only those need JWT_* in production; a process that never reads a token (ingestion
    # authenticates webhooks by signature, compute has no API) must not be refused for
    # lacking a secret it never uses. True unless a subclass opts out, so a new process
    # is safe by default.
    verifies_tokens: ClassVar[bool] = True

    @model_validator(mode="after")
    def _refuse_unsafe_production_values(self) -> Self:
        """Refuses, in production, for processes that verify tokens: AUTH_DISABLED, and a
        JWT_SECRET that is missing, a known example or shorter than 32 characters (HS256)
        or a missing JWT_PUBLIC_KEY (RS256). Development accepts anything."""
        if self.environment != "production" or not self.verifies_tokens:
            return self
        if self.auth_disabled:
            raise ValueError("AUTH_DISABLED=true is refused unless ENVIRONMENT=development")
        if self.auth.algorithm == "HS256":
            secret = self.auth.secret.get_secret_value() if self.auth.secret else ""
            if secret in _KNOWN_DEV_SECRETS or len(secret) < 32:
                raise ValueError(
                    "JWT_SECRET must be set to a random value of at least 32 characters "
                    "(or set ENVIRONMENT=development for local work)"
                )
        elif not self.auth.public_key:
            raise ValueError("JWT_PUBLIC_KEY is required with JWT_ALGORITHM=RS256")
        return self


class ConfigApiSettings(ServiceSettings):
    """The config API (`uvicorn main:app`)."""

    model_config = SettingsConfigDict(env_prefix="API_", extra="ignore")

    port: int = 8000
    # Where storefronts reach ingestion; shown in GET .../webhook.
    public_ingest_url: str = "http://127.0.0.1:8001"
    default_rotation_grace_hours: int = Field(default=24, ge=0, le=24 * 30)
    # Browser origins of the dashboard allowed to call the API (CORS), as a JSON list:
    # API_CORS_ORIGINS='["https://dashboard.example.com"]'. Empty: no CORS headers.
    cors_origins: list[str] = Field(default_factory=list)
    # Training-set jobs (app/services/training_job_service.py): a queued or running job
    # whose process wrote no heartbeat for this long is marked failed (its process
    # died); the users a job's queries cover at once (memory per query in ClickHouse).
    training_job_stale_seconds: float = Field(default=30.0, gt=0)
    training_job_chunk_users: int = Field(default=2000, ge=1)


class IngestionSettings(ServiceSettings):
    """The ingestion runtime (`runtime/ingestion/main.py`)."""

    model_config = SettingsConfigDict(env_prefix="INGEST_", extra="ignore")
    # Storefronts authenticate by webhook signature; no route takes a bearer token.
    verifies_tokens: ClassVar[bool] = False

    port: int = 8001
    max_event_bytes: int = 32 * 1024
    max_batch_bytes: int = 500 * 1024
    max_batch_events: int = 2500
    signature_tolerance_seconds: int = 300
    max_future_seconds: int = 300
    dedup_ttl_seconds: int = 24 * 3600
    # Replay and dedup claims stay "pending" while their request produces, then become
    # "done" (runtime/ingestion/claims.py). A pending claim must outlive its request, so
    # a produce is abandoned (503) after produce_timeout_seconds and claims last
    # CLAIM_MARGIN_SECONDS longer; a claim left behind by a crash blocks its retries
    # (409 EventInFlight) for at most claim_ttl_seconds.
    claim_ttl_seconds: int = 60
    produce_timeout_seconds: float = Field(default=30.0, gt=0)
    unknown_properties: Literal["reject", "drop"] = "reject"
    rate_limit_project: str = "6000/minute"
    rate_limit_pipeline: str = "3000/minute"
    # Per-project override of both limits:
    # INGEST_RATE_LIMIT_OVERRIDES='{"shop1": "100/second"}'
    rate_limit_overrides: dict[str, str] = Field(default_factory=dict)
    # uvicorn's access line per request (see runtime/ingestion/main.py); off by default,
    # as in serving, for its cost.
    access_log: bool = False

    @model_validator(mode="after")
    def _body_limit_is_the_batch_limit(self) -> Self:
        # A batch is the largest body ingestion takes (its routes refine per endpoint), so
        # unless INGEST_MAX_BODY_BYTES says otherwise the process reads no more than that.
        if "max_body_bytes" not in self.model_fields_set:
            self.max_body_bytes = self.max_batch_bytes
        return self

    @model_validator(mode="after")
    def _claims_outlive_the_produce(self) -> Self:
        if self.claim_ttl_seconds < self.produce_timeout_seconds + CLAIM_MARGIN_SECONDS:
            raise ValueError(
                f"INGEST_CLAIM_TTL_SECONDS ({self.claim_ttl_seconds}) must be at least "
                f"INGEST_PRODUCE_TIMEOUT_SECONDS + {CLAIM_MARGIN_SECONDS} "
                f"({self.produce_timeout_seconds + CLAIM_MARGIN_SECONDS:g})"
            )
        return self


class ComputeSettings(ServiceSettings):
    """The compute runtime (`runtime/compute/main.py`); HTTP only for health and metrics."""

    model_config = SettingsConfigDict(env_prefix="COMPUTE_", extra="ignore")
    # Health and metrics only; no route takes a bearer token.
    verifies_tokens: ClassVar[bool] = False

    port: int = 9100
    max_batch_messages: int = 2000
    poll_timeout_ms: int = 200
    # User records read-applied-written at once (one batch's users share it).
    write_concurrency: int = Field(default=64, ge=1, le=1024)
    # How long a user record remembers the event ids it applied (drops second copies).
    # At least ingestion's INGEST_DEDUP_TTL_SECONDS: past it neither layer stops a copy.
    dedup_horizon_seconds: int = Field(default=86_400, ge=60)
    # At most this many remembered ids per record (8 bytes each, stored apart from the
    # tiles, which serving reads alone); the oldest go first.
    dedup_max_ids: int = Field(default=20_000, ge=100)


class ArchiveSettings(ServiceSettings):
    """The archive runtime (`runtime/archive/main.py`): the events topic into the event
    archive under its own consumer group; HTTP only for health and metrics."""

    model_config = SettingsConfigDict(env_prefix="ARCHIVE_", extra="ignore")
    verifies_tokens: ClassVar[bool] = False

    port: int = 9200
    # Its own group: it reads every event whatever compute does, and commits only after
    # the insert. Larger batches than compute's: one INSERT each, ClickHouse likes few.
    consumer_group: str = "dps-archive"
    max_batch_messages: int = Field(default=10_000, ge=1)
    poll_timeout_ms: int = Field(default=500, ge=1)
    # Run deployments' backfills (`app/services/backfill_service.py`): needs the config
    # store, the cache and the online store besides the archive.
    backfill: bool = True
    # How long after staging a backfill's features every compute is taken to run them
    # (the loaders' 0.5 s poll, their 5 s store poll while Redis is down, one batch).
    backfill_settle_s: float = Field(default=6.0, ge=0)
    # Users rebuilt per chunk (one set of queries, one progress update each).
    backfill_chunk_users: int = Field(default=2_000, ge=1)


class ServingSettings(ServiceSettings):
    """The serving runtime (`runtime/serving/main.py`)."""

    model_config = SettingsConfigDict(env_prefix="SERVING_", extra="ignore")

    port: int = 8002
    max_batch_users: int = 1000
    # uvicorn's access line per request (see `create_app`); off by default for its cost.
    access_log: bool = False


class StandaloneBackends(BackendSettings):
    """Standalone's backends: the embedded ones unless the environment names others, as
    for every process (e.g. `ANALYTICS=none` for a lighter standalone without the archive,
    `ONLINE_STORE=redis` to read the features from a Redis already running)."""

    config_store: ConfigStoreKind = "sqlite"
    event_log: EventLogKind = "local"
    online_store: OnlineStoreKind = "sqlite"
    analytics: AnalyticsKind = "chdb"
    cache: CacheKind = "memory"


class StandaloneSettings(ConfigApiSettings):
    """All four roles in one process with embedded backends: the quickest way to see it work.

    It is the config API too, so it takes the API's knobs (with its own prefix)."""

    model_config = SettingsConfigDict(env_prefix="STANDALONE_", extra="ignore")

    environment: Environment = Field(default="development", validation_alias="ENVIRONMENT")
    port: int = 8000
    backends: BackendSettings = Field(default_factory=lambda: StandaloneBackends())

    @model_validator(mode="after")
    def _ingest_on_the_same_port(self) -> Self:
        # Ingestion answers on this very process: the webhook URL follows host and port
        # unless STANDALONE_PUBLIC_INGEST_URL says otherwise (e.g. behind a proxy).
        if "public_ingest_url" not in self.model_fields_set:
            self.public_ingest_url = f"http://{self.host}:{self.port}"
        return self
