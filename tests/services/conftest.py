"""Deployment service fixtures: both config stores, the real Redis, a project per test."""

from __future__ import annotations

import pytest

from app.db.config_store import ConfigStore
from app.db.redis_cache import RedisCache
from app.services.deployment_service import DeploymentService
from tests.core.fixtures import cache, config_store, own_cache, own_redis, project_id

__all__ = ["cache", "config_store", "own_cache", "own_redis", "project_id"]


@pytest.fixture
def service(config_store: ConfigStore, cache: RedisCache) -> DeploymentService:
    return DeploymentService(config_store, cache)
