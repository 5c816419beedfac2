"""The serving app on real backends: Redis (cache + config copy), SQLite config store,
and each online store that runs here (Redis, SQLite); a clock the test moves."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr

from app.core.auth import issue_token
from app.core.config_loader import publish_config
from app.core.service import Resources
from app.core.settings import AuthSettings, BackendSettings, ServingSettings
from app.db.cache import Cache
from app.db.online_store import OnlineStore
from app.schemas.deployment import ConfigSnapshot
from app.tiles.record import AppliedEvent, apply_batch
from runtime.compute.specs import build_specs, event_key
from runtime.serving.main import create_app
from tests.conftest import unique

# A fixed, realistic "now": 2025-05-01T12:00:00Z.
START_MS = 1_746_100_800_000


class Clock:
    """The serving app's `now_ms`, moved by the test."""

    def __init__(self, now_ms: int) -> None:
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms

    def advance(self, seconds: float) -> None:
        self.now_ms += int(seconds * 1000)


class ServingKit:
    """A running serving app, its backends, and helpers to deploy and write records."""

    def __init__(self, app: FastAPI, clock: Clock, auth: AuthSettings) -> None:
        self.app = app
        self.clock = clock
        self.auth = auth
        self._offset = 0
        resources: Resources = app.state.resources
        assert resources.cache is not None
        assert resources.online_store is not None
        self.cache: Cache = resources.cache
        self.store: OnlineStore = resources.online_store

    def token(self, *projects: str) -> str:
        return issue_token(self.auth, "recommender", list(projects))

    def client(self, *projects: str) -> httpx.AsyncClient:
        """An HTTP client into the app whose token grants `projects`."""
        headers = {"authorization": f"Bearer {self.token(*projects)}"} if projects else {}
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app), base_url="http://serving", headers=headers
        )

    async def deploy(self, snapshot: ConfigSnapshot) -> None:
        """Publishes the snapshot the way a deployment does (Redis copy + notice)."""
        await publish_config(self.cache, snapshot)

    async def write_events(
        self,
        snapshot: ConfigSnapshot,
        user_id: str,
        events: Sequence[tuple[str, str, int, dict[str, Any]]],
    ) -> None:
        """Applies (pipeline id, event name, event time, properties) to the user's record
        with compute's pure code at the current clock, and stores it."""
        specs = build_specs(snapshot)
        applied = []
        for pipeline_id, name, t_ms, props in events:
            self._offset += 1
            applied.append(AppliedEvent(0, self._offset, event_key(pipeline_id, name), t_ms, props))
        current = await self.store.get(snapshot.project_id, user_id)
        result = apply_batch(
            current.record if current else None, specs.by_event, applied, self.clock()
        )
        assert specs.ttl_seconds is not None
        await self.store.put(
            snapshot.project_id,
            user_id,
            result.record,
            specs.ttl_seconds,
            current.generation if current else None,
        )


@pytest.fixture(params=["redis", "sqlite"])
async def kit(
    request: pytest.FixtureRequest, backend_settings: BackendSettings
) -> AsyncIterator[ServingKit]:
    """The serving app over each online store, started (lifespan) for the test."""
    backends = backend_settings.model_copy(
        update={"online_store": request.param, "cache": "redis", "config_store": "sqlite"}
    )
    auth = AuthSettings(secret=SecretStr(secrets.token_urlsafe(32)))
    settings = ServingSettings(
        environment="production", backends=backends, auth=auth, max_batch_users=50
    )
    clock = Clock(START_MS)
    app = create_app(settings, now_ms=clock)
    async with app.router.lifespan_context(app):
        yield ServingKit(app, clock, auth)


@pytest.fixture
def project_id() -> str:
    return unique("shop")
