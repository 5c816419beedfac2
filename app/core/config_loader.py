"""The deployed config of every project, as the runtimes (ingestion, compute, serving) see it.

Three tiers, nearest first:

1. in process: `peek()` is a dict lookup, safe on the hottest path;
2. Redis, the shared copy: `dps:config:{project_id}` holds the snapshot JSON and
   `dps:config-version:{project_id}` its version (a few bytes, cheap to poll); every
   publish is announced on `dps:config-changes` as `{"project_id", "version"}`;
3. the config store: the latest *successful* deployment is the source of truth. A
   failed deploy is never read back from there, so it never goes live by accident.
   While a newer deployment is `backfilling`, its new and changed features come with
   it as `staged` (`running_config`): compute fills them, nothing serves them yet.

Freshness: a background task listens to the change channel (resubscribing with backoff
after Redis failures) and a poll every 0.5 s compares the version keys of the projects
held, so a lost notice is caught within a second. While Redis is unreachable the loader
keeps serving what it holds and checks the store every few seconds instead; it never
drops a config it once had because a backend is down.

Write-back race: a loader that finds Redis empty fills it from the store. A deploy may
publish a newer version between the loader's store read and its write. Both sides
re-check after writing (the loader re-reads the store, the deployer re-reads the
version key after recording success) and re-publish the newer version, so one of them
always repairs the other's stale write.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from contextlib import AsyncExitStack
from typing import Annotated, Any

from fastapi import Depends
from pydantic import ValidationError

from app.core.config_channel import (
    CONFIG_CHANNEL,
    announce,
    config_key,
    config_token,
    listen_forever,
    publish_config,
    running_config,
    version_key,
    write_config,
)
from app.core.errors import ConfigUnavailable, ServiceUnavailable
from app.core.service import Resources, get_resources
from app.db.cache import Cache
from app.db.config_store import ConfigStore
from app.schemas.deployment import ConfigSnapshot, FeatureSnapshot, PipelineSnapshot

logger = logging.getLogger(__name__)

# The publishing side lives in config_channel; re-exported for the runtimes and tests.
__all__ = [
    "CONFIG_CHANNEL",
    "ConfigLoader",
    "ConfigLoaderDep",
    "announce",
    "config_key",
    "config_loader_hook",
    "get_config_loader",
    "listen_forever",
    "live_features",
    "live_pipelines",
    "publish_config",
    "version_key",
    "write_config",
]


# -- what goes live ------------------------------------------------------------------------
def live_pipelines(snapshot: ConfigSnapshot) -> list[PipelineSnapshot]:
    """Returns the active pipelines, each with only its enabled events."""
    return [
        p.model_copy(update={"events": [e for e in p.events if e.enabled]})
        for p in snapshot.pipelines
        if p.status == "active"
    ]


def live_features(snapshot: ConfigSnapshot) -> list[FeatureSnapshot]:
    """Returns the enabled features whose pipeline is active and, for an aggregate,
    whose source event is enabled (a validated deployment has no other enabled feature;
    this filter makes sure)."""
    pipelines = live_pipelines(snapshot)
    active = {p.id for p in pipelines}
    events = {(p.id, e.name) for p in pipelines for e in p.events}
    return [
        f
        for f in snapshot.features
        if f.enabled
        and (
            f.pipeline_id in active
            if f.kind == "derived"
            else (f.pipeline_id, f.source_event) in events
        )
    ]


ChangeCallback = Callable[[ConfigSnapshot], Awaitable[None] | None]


class ConfigLoader:
    """Holds the deployed config of every project a runtime has asked for."""

    def __init__(
        self,
        cache: Cache,
        store: ConfigStore,
        *,
        poll_interval_s: float = 0.5,
        negative_ttl_s: float = 1.0,
        store_poll_interval_s: float = 5.0,
    ) -> None:
        self._cache = cache
        self._store = store
        self._poll_interval_s = poll_interval_s
        self._negative_ttl_s = negative_ttl_s
        self._store_poll_interval_s = store_poll_interval_s
        self._configs: dict[str, ConfigSnapshot] = {}
        # project id → monotonic time until which "not deployed" is believed.
        self._missing: dict[str, float] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._callbacks: list[ChangeCallback] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._redis_ok = True
        self._last_store_poll = 0.0

    # -- lifetime ------------------------------------------------------------------------
    async def start(self, *, preload: bool = True) -> None:
        """Starts listening and polling; with `preload`, first loads every deployed
        project (best effort: a backend that is down only delays it to the first get)."""
        if preload:
            try:
                projects = await self._store.deployed_projects()
            except Exception as exc:
                logger.warning("config preload skipped, store unavailable: %r", exc)
                projects = []
            await _gather_bounded(self._preload, projects)
        self._tasks = [
            asyncio.create_task(listen_forever(self._cache, CONFIG_CHANNEL, self._on_notice)),
            asyncio.create_task(self._poll_forever()),
        ]

    async def stop(self) -> None:
        """Stops the background tasks; the held configs stay readable."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _preload(self, project_id: str) -> None:
        with contextlib.suppress(ConfigUnavailable):
            await self.get(project_id)

    def on_change(self, callback: ChangeCallback) -> None:
        """Registers `callback(snapshot)`, called (awaited if async) whenever a project's
        held config is replaced, including its first load. Errors are logged."""
        self._callbacks.append(callback)

    # -- reading -------------------------------------------------------------------------
    def peek(self, project_id: str) -> ConfigSnapshot | None:
        """Returns the config held in process, or None; never does I/O."""
        return self._configs.get(project_id)

    def projects(self) -> list[str]:
        """Returns the ids of the projects whose config is held."""
        return sorted(self._configs)

    async def get(self, project_id: str) -> ConfigSnapshot | None:
        """Returns the deployed config, or None if the project has no successful deployment.

        Raises ConfigUnavailable when it is not held and neither Redis nor the store
        answers (a runtime should answer 503, not "unknown project").
        """
        held = self._configs.get(project_id)
        if held is not None:
            return held
        until = self._missing.get(project_id)
        if until is not None and until > time.monotonic():
            return None
        async with self._lock(project_id):
            held = self._configs.get(project_id)
            if held is not None:
                return held
            return await self._load(project_id)

    # -- internals -----------------------------------------------------------------------
    def _lock(self, project_id: str) -> asyncio.Lock:
        lock = self._locks.get(project_id)
        if lock is None:
            lock = self._locks[project_id] = asyncio.Lock()
        return lock

    async def _load(self, project_id: str) -> ConfigSnapshot | None:
        """Redis, then the store; caller holds the project's lock."""
        try:
            snapshot = await self._from_redis(project_id)
            self._set_redis_ok(True)
        except Exception as exc:
            self._set_redis_ok(False, exc)
            return await self._from_store(project_id, write_back=False)
        if snapshot is not None:
            await self._apply(snapshot)
            return snapshot
        return await self._from_store(project_id, write_back=True)

    async def _from_redis(self, project_id: str) -> ConfigSnapshot | None:
        raw = await self._cache.get(config_key(project_id))
        if raw is None:
            return None
        try:
            snapshot = ConfigSnapshot.model_validate_json(raw)
        except ValidationError:
            # A corrupt or foreign value: the store is still right, and the write-back
            # replaces it.
            logger.warning("ignoring unreadable %s", config_key(project_id))
            return None
        return snapshot if snapshot.project_id == project_id else None

    async def _from_store(self, project_id: str, *, write_back: bool) -> ConfigSnapshot | None:
        try:
            snapshot = await self._running(project_id)
        except Exception as exc:
            held = self._configs.get(project_id)
            if held is not None:
                return held
            raise ConfigUnavailable(
                f"config of project {project_id!r} is unavailable: {type(exc).__name__}"
            ) from exc
        if snapshot is None:
            # The store answered: nothing of this project is live (e.g. its first deploy
            # failed after a loader had seen it in Redis), so nothing is held either.
            self._configs.pop(project_id, None)
            self._missing[project_id] = time.monotonic() + self._negative_ttl_s
            return None
        if write_back:
            snapshot = await self._write_back(snapshot)
        await self._apply(snapshot)
        return snapshot

    async def _write_back(self, snapshot: ConfigSnapshot) -> ConfigSnapshot:
        """Fills Redis from the store, then re-reads the store in case a deploy published
        in between (see the module docstring); returns the newest snapshot seen."""
        try:
            await write_config(self._cache, snapshot)
            latest = await self._running(snapshot.project_id)
            if latest is not None and config_token(latest) != config_token(snapshot):
                snapshot = latest
                await write_config(self._cache, snapshot)
        except Exception as exc:  # the copy in process is right; Redis catches up later
            logger.warning("config write-back of %s failed: %r", snapshot.project_id, exc)
        return snapshot

    async def _running(self, project_id: str) -> ConfigSnapshot | None:
        """The store's answer: the live deployment, with the features of a backfilling
        one staged."""
        # One read in the common case: the newest of the two is the live one.
        head = await self._store.latest_deployment(project_id, ("success", "backfilling"))
        if head is None or head.status == "success":
            return running_config(head, None)
        return running_config(await self._store.latest_deployment(project_id), head)

    async def _apply(self, snapshot: ConfigSnapshot) -> None:
        project_id = snapshot.project_id
        self._missing.pop(project_id, None)
        held = self._configs.get(project_id)
        if held is not None and config_token(held) == config_token(snapshot):
            return
        self._configs[project_id] = snapshot
        logger.info("config of %s is now version %d", project_id, snapshot.version)
        for callback in list(self._callbacks):
            try:
                result = callback(snapshot)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                logger.exception("config change callback failed for %s", project_id)

    def _set_redis_ok(self, ok: bool, exc: BaseException | None = None) -> None:
        if ok != self._redis_ok:
            if ok:
                logger.info("redis is back; config follows it again")
            else:
                logger.warning("redis unreachable (%r); serving held configs", exc)
        self._redis_ok = ok

    async def _refresh(self, project_id: str, token_hint: str | None = None) -> None:
        """Brings one held (or negatively cached) project up to date."""
        async with self._lock(project_id):
            held = self._configs.get(project_id)
            if token_hint is not None and held is not None and config_token(held) == token_hint:
                return
            try:
                raw = await self._cache.get(version_key(project_id))
                self._set_redis_ok(True)
            except Exception as exc:
                self._set_redis_ok(False, exc)
                return
            if raw is None:
                # Redis lost the copy (restart, eviction): refill it from the store.
                if held is not None:
                    with contextlib.suppress(ConfigUnavailable):
                        await self._from_store(project_id, write_back=True)
                return
            if held is not None and raw == config_token(held).encode():
                return
            with contextlib.suppress(ConfigUnavailable):
                await self._load(project_id)

    async def _on_notice(self, message: bytes) -> None:
        try:
            notice: dict[str, Any] = json.loads(message)
            project_id = str(notice["project_id"])
            token = str(notice.get("token") or int(notice["version"]))
        except (ValueError, KeyError, TypeError, AttributeError):
            logger.warning("ignoring malformed config notice %r", message[:200])
            return
        # A project nobody asked for is loaded lazily on its first get().
        if self._missing.pop(project_id, None) is not None or project_id in self._configs:
            await self._refresh(project_id, token)

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self._poll_interval_s)
            try:
                await self.poll()
            except Exception:  # the poll must survive anything; it is the safety net
                logger.exception("config poll failed")

    async def poll(self) -> None:
        """One round of the safety-net poll (the background task calls it every 0.5 s)."""
        now = time.monotonic()
        for project_id in [p for p, t in self._missing.items() if t <= now]:
            self._missing.pop(project_id, None)
        # Unknown project ids (typos, probes) must not pile up locks forever.
        for project_id, lock in list(self._locks.items()):
            idle = not lock.locked()
            if idle and project_id not in self._configs and project_id not in self._missing:
                del self._locks[project_id]
        projects = list(self._configs)
        if not self._redis_ok:
            # One ping, not one failing GET per project, while Redis is down.
            with contextlib.suppress(Exception):
                await self._cache.ping()
                self._set_redis_ok(True)
        if self._redis_ok:
            await _gather_bounded(self._refresh, projects)
        elif now - self._last_store_poll >= self._store_poll_interval_s:
            # A deploy that reached Redis from elsewhere is invisible from here while
            # Redis is unreachable, so ask the store now and then.
            self._last_store_poll = now
            await _gather_bounded(self._store_refresh, projects)

    async def _store_refresh(self, project_id: str) -> None:
        async with self._lock(project_id):
            with contextlib.suppress(ConfigUnavailable):
                await self._from_store(project_id, write_back=False)


async def _gather_bounded(
    call: Callable[[str], Awaitable[None]], project_ids: Iterable[str], limit: int = 32
) -> None:
    semaphore = asyncio.Semaphore(limit)

    async def run(project_id: str) -> None:
        async with semaphore:
            # The coroutine is made only here, where it is awaited at once: made up front,
            # those still queued behind the semaphore (or not yet started) when stop()
            # cancels the gather were never awaited ("coroutine ... was never awaited").
            await call(project_id)

    await asyncio.gather(*(run(p) for p in project_ids))


# -- process wiring ------------------------------------------------------------------------
async def config_loader_hook(resources: Resources, stack: AsyncExitStack) -> None:
    """`build_app(startup=[config_loader_hook])`: builds the loader from the process's
    cache and config store, starts it, stops it on shutdown, and stores it in
    `resources.config_loader`. Raises RuntimeError if either backend is missing."""
    if resources.cache is None or resources.config_store is None:
        raise RuntimeError("the config loader needs Backend.CACHE and Backend.CONFIG_STORE")
    loader = ConfigLoader(resources.cache, resources.config_store)
    await loader.start()
    stack.push_async_callback(loader.stop)
    resources.config_loader = loader


def get_config_loader(resources: Annotated[Resources, Depends(get_resources)]) -> ConfigLoader:
    """The running process's loader; raises ServiceUnavailable if it has none."""
    loader = resources.config_loader
    if loader is None:
        raise ServiceUnavailable("Config loader is not running in this process")
    return loader


ConfigLoaderDep = Annotated[ConfigLoader, Depends(get_config_loader)]
