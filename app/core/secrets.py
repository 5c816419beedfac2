"""Webhook signing secrets for ingestion, kept out of deployment snapshots.

Secrets rotate without a deploy, so they travel their own way: the config API writes
`dps:secrets:{project_id}:{pipeline_id}` (JSON `WebhookSecrets`, expiring after
`REDIS_TTL_S`) and announces `{"project_id", "pipeline_id"}` on `dps:secret-changes`
after creating a pipeline, rotating its secret or deleting it
(`app.services.secret_publisher`). `SecretProvider` reads them: in process for about a
second, then Redis, then the pipeline document in the config store (written back to
Redis). The Redis copy expires so that a change whose publish was lost (Redis down at
that moment) is corrected within `REDIS_TTL_S`; rotation keeps the previous secret
valid for hours, so a short lag never rejects a correctly signed event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends
from pydantic import ValidationError

from app.core.config_channel import listen_forever
from app.core.errors import ConfigUnavailable, ServiceUnavailable
from app.core.service import Resources, get_resources
from app.db.cache import Cache
from app.db.config_store import ConfigStore
from app.db.documents import PipelineDocument
from app.schemas.pipeline import WebhookSecrets

logger = logging.getLogger(__name__)

SECRET_CHANNEL = "dps:secret-changes"  # noqa: S105 (a channel name, not a secret)
REDIS_TTL_S = 300


def secrets_key(project_id: str, pipeline_id: str) -> str:
    """Returns the Redis key of a pipeline's webhook secrets."""
    return f"dps:secrets:{project_id}:{pipeline_id}"


def secrets_of(pipeline: PipelineDocument, now: datetime | None = None) -> WebhookSecrets:
    """Returns the secrets that verify signatures at `now` (default: the current time):
    the current one, and the previous one until its grace period ends."""
    now = now or datetime.now(UTC)
    previous, expires = pipeline.previous_webhook_secret, pipeline.previous_secret_expires_at
    if previous is None or expires is None or expires <= now:
        return WebhookSecrets(current=pipeline.webhook_secret)
    return WebhookSecrets(
        current=pipeline.webhook_secret, previous=previous, previous_expires_at=expires
    )


async def write_secrets(
    cache: Cache, project_id: str, pipeline_id: str, secrets: WebhookSecrets
) -> None:
    """Stores the shared copy (expiring after REDIS_TTL_S). Raises CacheUnavailable."""
    value = secrets.model_dump_json().encode()
    await cache.set(secrets_key(project_id, pipeline_id), value, ttl_seconds=REDIS_TTL_S)


async def announce_secrets(cache: Cache, project_id: str, pipeline_id: str) -> None:
    """Tells every provider to drop its copy. Raises CacheUnavailable."""
    message = json.dumps({"project_id": project_id, "pipeline_id": pipeline_id}).encode()
    await cache.publish(SECRET_CHANNEL, message)


class SecretProvider:
    """Webhook secrets per (project, pipeline) for the ingestion runtime."""

    def __init__(self, cache: Cache, store: ConfigStore, *, ttl_s: float = 1.5) -> None:
        self._cache = cache
        self._store = store
        self._ttl_s = ttl_s
        # (project, pipeline) → (secrets or None for "no such pipeline", expires at).
        self._held: dict[tuple[str, str], tuple[WebhookSecrets | None, float]] = {}
        # One read at a time per pipeline: when the held copy expires under load, the
        # concurrent requests wait for one Redis GET instead of each sending its own
        # (with 32 requests in flight that was ~5% of ingestion's CPU, py-spy).
        self._reading: dict[tuple[str, str], asyncio.Future[WebhookSecrets | None]] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Starts listening for changes (resubscribing after Redis failures)."""
        self._task = asyncio.create_task(
            listen_forever(self._cache, SECRET_CHANNEL, self._on_notice)
        )

    async def stop(self) -> None:
        """Stops listening."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def invalidate(self, project_id: str, pipeline_id: str) -> None:
        """Drops the in-process copy, so the next get() reads Redis or the store."""
        self._held.pop((project_id, pipeline_id), None)

    async def get(self, project_id: str, pipeline_id: str) -> WebhookSecrets | None:
        """Returns the pipeline's secrets, or None if the pipeline does not exist.

        Raises ConfigUnavailable when nothing is held and neither Redis nor the store
        answers. A copy past its TTL is still served while both are down: refusing
        every webhook would lose events the storefront cannot resend.
        """
        key = (project_id, pipeline_id)
        now = time.monotonic()
        held = self._held.get(key)
        if held is not None and held[1] > now:
            return held[0]
        reading = self._reading.get(key)
        if reading is None:
            reading = self._reading[key] = asyncio.ensure_future(self._refresh(key))
        try:
            # Shielded: a cancelled caller must not cancel the read the others wait for.
            return await asyncio.shield(reading)
        except ConfigUnavailable:
            if held is not None:
                return held[0]
            raise

    async def _refresh(self, key: tuple[str, str]) -> WebhookSecrets | None:
        try:
            secrets = await self._read(*key)
        finally:
            del self._reading[key]
        self._held[key] = (secrets, time.monotonic() + self._ttl_s)
        if len(self._held) > 100_000:
            self._sweep()
        return secrets

    async def _read(self, project_id: str, pipeline_id: str) -> WebhookSecrets | None:
        redis_ok = True
        try:
            raw = await self._cache.get(secrets_key(project_id, pipeline_id))
        except Exception as exc:
            logger.warning("secrets from redis failed (%r); reading the store", exc)
            redis_ok, raw = False, None
        if raw is not None:
            try:
                return WebhookSecrets.model_validate_json(raw)
            except ValidationError:
                logger.warning("ignoring unreadable %s", secrets_key(project_id, pipeline_id))
        try:
            pipeline = await self._store.get_pipeline(project_id, pipeline_id)
        except Exception as exc:
            raise ConfigUnavailable(
                f"webhook secrets of {project_id}/{pipeline_id} are unavailable"
            ) from exc
        if pipeline is None:
            return None
        secrets = secrets_of(pipeline)
        if redis_ok:
            with contextlib.suppress(Exception):
                await write_secrets(self._cache, project_id, pipeline_id, secrets)
        return secrets

    def _sweep(self) -> None:
        now = time.monotonic()
        for key in [k for k, (_, until) in self._held.items() if until <= now]:
            del self._held[key]

    async def _on_notice(self, message: bytes) -> None:
        try:
            notice: dict[str, Any] = json.loads(message)
            self.invalidate(str(notice["project_id"]), str(notice["pipeline_id"]))
        except (ValueError, KeyError, TypeError):
            logger.warning("ignoring malformed secret notice %r", message[:200])


async def secret_provider_hook(resources: Resources, stack: AsyncExitStack) -> None:
    """`build_app(startup=[secret_provider_hook])`: builds and starts a SecretProvider on
    the process's cache and store, stored in `resources.secret_provider`.
    Raises RuntimeError if either backend is missing."""
    if resources.cache is None or resources.config_store is None:
        raise RuntimeError("the secret provider needs Backend.CACHE and Backend.CONFIG_STORE")
    provider = SecretProvider(resources.cache, resources.config_store)
    await provider.start()
    stack.push_async_callback(provider.stop)
    resources.secret_provider = provider


def get_secret_provider(resources: Annotated[Resources, Depends(get_resources)]) -> SecretProvider:
    """The running process's provider; raises ServiceUnavailable if it has none."""
    provider = resources.secret_provider
    if provider is None:
        raise ServiceUnavailable("Secret provider is not running in this process")
    return provider


SecretProviderDep = Annotated[SecretProvider, Depends(get_secret_provider)]
