"""Tells ingestion about webhook secret changes (they never wait for a deploy).

The config API calls `publish` after creating a pipeline or rotating its secret, and
`forget` after deleting it, once the store write succeeded. Both are best effort: the
store already holds the truth, and ingestion's `SecretProvider` falls back to it when
the Redis copy is missing; a copy left stale by a failed call expires within
`app.core.secrets.REDIS_TTL_S`. They return whether Redis took the change.
"""

from __future__ import annotations

import logging

from app.core.secrets import announce_secrets, secrets_key, write_secrets
from app.db.cache import Cache
from app.schemas.pipeline import WebhookSecrets

logger = logging.getLogger(__name__)


class SecretPublisher:
    """Writes and announces webhook secret changes on the shared cache."""

    def __init__(self, cache: Cache) -> None:
        self._cache = cache

    async def publish(self, project_id: str, pipeline_id: str, secrets: WebhookSecrets) -> bool:
        """Shares the pipeline's current secrets; returns False if Redis was unreachable."""
        try:
            await write_secrets(self._cache, project_id, pipeline_id, secrets)
            await announce_secrets(self._cache, project_id, pipeline_id)
        except Exception as exc:  # best effort by design, see the module docstring
            logger.warning("publishing secrets of %s/%s failed: %r", project_id, pipeline_id, exc)
            return False
        return True

    async def forget(self, project_id: str, pipeline_id: str) -> bool:
        """Removes a deleted pipeline's secrets; returns False if Redis was unreachable."""
        try:
            await self._cache.delete(secrets_key(project_id, pipeline_id))
            await announce_secrets(self._cache, project_id, pipeline_id)
        except Exception as exc:  # best effort by design, see the module docstring
            logger.warning("forgetting secrets of %s/%s failed: %r", project_id, pipeline_id, exc)
            return False
        return True
