"""What the end-to-end tests share: the distributed backends (real Kafka and Redis) and the
bound that turns a stuck pipeline into a failure."""

from __future__ import annotations

import pytest

from app.core.settings import BackendSettings

# Turns a hang into a failure (consumer group join, catch-up); not a timing assertion.
CATCH_UP_BOUND_S = 90.0


@pytest.fixture
def distributed_backends(backend_settings: BackendSettings) -> BackendSettings:
    """The production shape on the test servers: Kafka event log, Redis cache and online
    store; SQLite config store and no analytics, which play no part in what is served."""
    return backend_settings.model_copy(
        update={
            "config_store": "sqlite",
            "cache": "redis",
            "event_log": "kafka",
            "online_store": "redis",
            "analytics": "none",
        }
    )
