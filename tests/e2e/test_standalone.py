"""The whole path on standalone: one app, one port, embedded backends (SQLite config store,
durable SQLite event log, SQLite online store, in-process cache), compute in-process.
The same scenario and oracle as on Kafka and Redis (`test_full_path.py`)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

import standalone
from app.core.settings import AuthSettings, BackendSettings, StandaloneSettings
from tests.e2e.test_full_path import Clock, drive_whole_path
from tests.support.apps import bearer, in_process


class Standalone:
    """Every role behind one client."""

    def __init__(self, client: httpx.AsyncClient, auth: AuthSettings, clock: Clock) -> None:
        self.clock = clock
        self.auth = auth
        self.clients = {"api": client, "ingest": client, "serving": client}

    def bearer(self, project_id: str) -> dict[str, str]:
        return bearer(self.auth, "e2e", [project_id])


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Standalone]:
    auth = AuthSettings(secret=SecretStr(secrets.token_urlsafe(32)))
    # The standalone defaults (embedded everything), only the data dir is the test's;
    # analytics off, as it plays no part in what is served.
    backends = StandaloneSettings().backends.model_copy(
        update={"data_dir": tmp_path, "analytics": "none"}
    )
    assert isinstance(backends, BackendSettings)
    settings = StandaloneSettings(environment="development", backends=backends, auth=auth)
    clock = Clock(int(datetime.now(UTC).timestamp() * 1000))
    app = standalone.create_app(settings, now_ms=clock)
    async with in_process(app, "http://standalone", timeout=30) as client:
        yield Standalone(client, auth, clock)


async def test_every_feature_and_window_matches_the_oracle_on_standalone(running: Standalone):
    await drive_whole_path(running)
