"""Config loader fixtures: both config stores, the real Redis, a private Redis."""

from __future__ import annotations

from tests.core.fixtures import cache, config_store, own_cache, own_redis, project_id

__all__ = ["cache", "config_store", "own_cache", "own_redis", "project_id"]
