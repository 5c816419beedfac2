"""How deployed configs travel through the shared cache: Redis keys, the change notice,
and a subscription that survives Redis restarts.

- `dps:config:{project_id}`: the deployed snapshot as JSON (with its version);
- `dps:config-version:{project_id}`: the version alone (`config_token`: `7`, or `7+8`
  while version 8 is backfilled beside the live 7), what pollers read;
- channel `dps:config-changes`: `{"project_id", "version", "token"}` after each publish.

The config API publishes (`publish_config`), the runtimes' `ConfigLoader` reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable

from app.db.cache import Cache
from app.db.documents import DeploymentDocument
from app.schemas.deployment import ConfigSnapshot

logger = logging.getLogger(__name__)

CONFIG_CHANNEL = "dps:config-changes"


def config_key(project_id: str) -> str:
    """Returns the Redis key of a project's deployed snapshot."""
    return f"dps:config:{project_id}"


def version_key(project_id: str) -> str:
    """Returns the Redis key of a project's deployed version (what the poll reads)."""
    return f"dps:config-version:{project_id}"


def config_token(snapshot: ConfigSnapshot) -> str:
    """Returns what tells two published configs apart: the version, plus the version
    being backfilled when features are staged (`running_config`)."""
    if snapshot.staged_version is None:
        return str(snapshot.version)
    return f"{snapshot.version}+{snapshot.staged_version}"


def token_version(raw: bytes) -> int:
    """Returns the live version of a stored `config_token`. Raises ValueError."""
    return int(raw.split(b"+", 1)[0])


# -- what runs while a deployment is backfilled ---------------------------------------------
def running_config(
    live: DeploymentDocument | None, backfilling: DeploymentDocument | None
) -> ConfigSnapshot | None:
    """Returns the config the runtimes run: the live (latest successful) deployment's
    snapshot, plus, while a newer deployment is `backfilling`, its new and changed
    features as `staged` (compute fills them beside the live ones; serving and ingestion
    ignore them). None when nothing is live."""
    if live is None:
        return None
    snapshot = live.snapshot.model_copy(update={"version": live.version})
    if backfilling is None or backfilling.version <= live.version or not backfilling.backfill:
        return snapshot
    wanted = set(backfilling.backfill.features)
    staged = [f for f in backfilling.snapshot.features if f.name in wanted]
    return snapshot.model_copy(update={"staged": staged, "staged_version": backfilling.version})


# -- publishing (the deployment service and the loaders' write-back) ------------------
async def write_config(cache: Cache, snapshot: ConfigSnapshot) -> None:
    """Stores the snapshot as the shared copy, without announcing it.

    The snapshot is written before the version, so a poller that sees the new version
    finds the new snapshot. Raises CacheUnavailable.
    """
    await cache.set(config_key(snapshot.project_id), snapshot.model_dump_json().encode())
    await cache.set(version_key(snapshot.project_id), config_token(snapshot).encode())


async def announce(cache: Cache, project_id: str, version: int, token: str | None = None) -> None:
    """Tells every loader that `project_id` now runs `version` (`token`: its
    `config_token`, when features are staged). Raises CacheUnavailable."""
    notice = {"project_id": project_id, "version": version, "token": token or str(version)}
    await cache.publish(CONFIG_CHANNEL, json.dumps(notice).encode())


async def publish_config(cache: Cache, snapshot: ConfigSnapshot) -> None:
    """Makes the snapshot the live config of its project. Raises CacheUnavailable."""
    await write_config(cache, snapshot)
    await announce(cache, snapshot.project_id, snapshot.version, config_token(snapshot))


# -- listening -----------------------------------------------------------------------------
async def listen_forever(
    cache: Cache,
    channel: str,
    handle: Callable[[bytes], Awaitable[None]],
    *,
    max_backoff_s: float = 5.0,
) -> None:
    """Feeds every message on `channel` to `handle` until cancelled, resubscribing after
    failures with jittered exponential backoff (messages sent while down are lost: the
    callers' polls and TTLs cover that gap)."""
    delay = 0.1
    while True:
        started = time.monotonic()
        stream = cache.subscribe(channel)
        try:
            async for message in stream:
                delay = 0.1
                try:
                    await handle(message)
                except Exception:  # one bad notice must not end the subscription
                    logger.exception("notice on %s could not be handled", channel)
        except Exception as exc:  # Redis outages end the iterator; retried below
            logger.warning("subscription to %s lost: %r; resubscribing", channel, exc)
        finally:
            # Close the generator now (it holds a connection), not whenever GC runs.
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()
        if time.monotonic() - started > 30:
            delay = 0.1
        await asyncio.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 2, max_backoff_s)
