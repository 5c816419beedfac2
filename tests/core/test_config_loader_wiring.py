"""The loader in a process (start-up hooks, dependencies), in standalone (in-process
cache), and the write-back race with a concurrent deploy."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient

from app.core.config_loader import (
    ConfigLoader,
    ConfigLoaderDep,
    config_key,
    config_loader_hook,
    version_key,
)
from app.core.secrets import SecretProvider, SecretProviderDep, secret_provider_hook
from app.core.service import Backend, build_app
from app.core.settings import BackendSettings, ServiceSettings
from app.db.config_store import ConfigStore
from app.db.documents import DeploymentDocument
from app.db.memory_cache import MemoryCache
from app.db.sqlite_config import SQLiteConfigStore
from app.schemas.deployment import DeploymentStatus
from app.services.deployment_service import DeploymentService
from tests.conftest import unique
from tests.factories import feature_document, pipeline_document

BOUND_S = 15.0  # a hang fails the test; not a timing assertion


async def add_draft(store: ConfigStore, project_id: str) -> None:
    p = pipeline_document(project_id, status="active")
    await store.insert_pipeline(p)
    await store.insert_feature(feature_document(project_id, p.id))


def held_version(loader: ConfigLoader, project_id: str) -> int | None:
    snapshot = loader.peek(project_id)
    return snapshot.version if snapshot is not None else None


class TestProcessWiring:
    async def test_hooks_start_the_loader_and_provider_and_stop_them_on_shutdown(
        self, backend_settings: BackendSettings
    ):
        project_id = unique("proj")
        settings = ServiceSettings(
            environment="development",
            auth_disabled=True,
            backends=backend_settings.model_copy(update={"config_store": "sqlite"}),
        )
        app: FastAPI = build_app(
            settings=settings,
            title="t",
            description="t",
            needs=(Backend.CONFIG_STORE, Backend.CACHE),
            startup=(config_loader_hook, secret_provider_hook),
        )

        @app.get("/probe/{project_id}")
        async def probe(
            project_id: str, loader: ConfigLoaderDep, provider: SecretProviderDep
        ) -> dict[str, Any]:
            snapshot = await loader.get(project_id)
            return {
                "version": snapshot.version if snapshot else None,
                "provider": type(provider).__name__,
            }

        async with app.router.lifespan_context(app):
            resources = app.state.resources
            loader = resources.config_loader
            assert isinstance(loader, ConfigLoader)
            assert isinstance(resources.secret_provider, SecretProvider)
            await add_draft(resources.config_store, project_id)
            await DeploymentService(resources.config_store, resources.cache).deploy(
                project_id, "alice"
            )
            async with AsyncClient(transport=ASGITransport(app=app), base_url="http://t") as c:
                body = (await c.get(f"/probe/{project_id}")).json()
            assert body == {"version": 1, "provider": "SecretProvider"}
            tasks = list(loader._tasks)
            assert tasks
            assert not any(t.done() for t in tasks)
        assert all(t.done() for t in tasks)

    async def test_the_dependency_answers_503_without_a_loader(
        self, backend_settings: BackendSettings
    ):
        settings = ServiceSettings(environment="development", auth_disabled=True)
        app = build_app(settings=settings, title="t", description="t", needs=())

        @app.get("/probe")
        async def probe(loader: ConfigLoaderDep) -> dict[str, str]:
            return {}

        async with (
            app.router.lifespan_context(app),
            AsyncClient(transport=ASGITransport(app=app), base_url="http://t") as c,
        ):
            response = await c.get("/probe")
        assert response.status_code == 503
        assert response.json()["error"] == "ServiceUnavailable"


class TestStandalone:
    async def test_a_deploy_is_live_through_the_in_process_cache(
        self, backend_settings: BackendSettings
    ):
        project_id = unique("proj")
        store = SQLiteConfigStore(backend_settings)
        await store.initialize()
        cache = MemoryCache()
        loader = ConfigLoader(cache, store, poll_interval_s=3600)  # notices only
        arrived = asyncio.Event()
        loader.on_change(lambda snapshot: arrived.set())
        try:
            await loader.start()
            assert await loader.get(project_id) is None
            await add_draft(store, project_id)
            await DeploymentService(store, cache).deploy(project_id, "alice")
            await asyncio.wait_for(arrived.wait(), BOUND_S)
            assert held_version(loader, project_id) == 1
        finally:
            await loader.stop()
            await store.close()


@pytest.mark.redis
class TestWriteBackRace:
    async def test_a_deploy_between_the_store_read_and_the_write_back_wins(
        self, config_store, cache, project_id, monkeypatch
    ):
        await add_draft(config_store, project_id)
        deployer = DeploymentService(config_store, cache)
        await deployer.deploy(project_id, "alice")
        await cache.delete(config_key(project_id))
        await cache.delete(version_key(project_id))

        real = config_store.latest_deployment
        read_done, go_on = asyncio.Event(), asyncio.Event()
        paused = [False]

        async def slow_first_read(
            pid: str, statuses: tuple[DeploymentStatus, ...] = ("success",)
        ) -> DeploymentDocument | None:
            doc = await real(pid, statuses)
            if not paused[0] and statuses == ("success", "backfilling"):  # the loader's read
                paused[0] = True
                read_done.set()
                await go_on.wait()  # the loader holds version 1 from the store here
            return doc

        monkeypatch.setattr(config_store, "latest_deployment", slow_first_read)
        loader = ConfigLoader(cache, config_store)
        loading = asyncio.create_task(loader.get(project_id))
        await read_done.wait()
        await config_store.insert_pipeline(pipeline_document(project_id))
        v2 = await deployer.deploy(project_id, "alice")
        go_on.set()
        snapshot = await loading

        # The loader's write-back of version 1 came after the deploy of version 2; its
        # re-read of the store put version 2 back.
        assert v2.version == 2
        assert snapshot is not None
        assert snapshot.version == 2
        assert await cache.get(version_key(project_id)) == b"2"
