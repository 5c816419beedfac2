"""Deployment service fixtures: the service on each config store and the real Redis (the
stores, caches and project ids come from tests/support/stores.py)."""

from __future__ import annotations

import pytest

from app.db.config_store import ConfigStore
from app.db.redis_cache import RedisCache
from app.services.deployment_service import DeploymentService


@pytest.fixture
def service(config_store: ConfigStore, cache: RedisCache) -> DeploymentService:
    return DeploymentService(config_store, cache)
