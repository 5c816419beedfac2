"""History on standalone (its default embedded archive, chDB): events sent through
ingestion are archived once, a training set at a moment equals serving's answer at that
moment, and a rebuild beside the running compute changes nothing served."""

from __future__ import annotations

import asyncio
import csv
import io
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

import standalone
from app.core.settings import AuthSettings, BackendSettings, StandaloneSettings
from app.db.analytics import AnalyticsSink
from tests.conftest import unique
from tests.e2e.test_full_path import (
    USERS,
    Clock,
    configure,
    read_users,
    scenario,
    send_batch,
    wait_until_served,
)
from tests.e2e.test_standalone import Standalone
from tests.support.apps import in_process

BOUND_S = 60.0  # turns a hang into a failure; not a timing assertion


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[tuple[Standalone, Any]]:
    auth = AuthSettings(secret=SecretStr(secrets.token_urlsafe(32)))
    backends = StandaloneSettings().backends.model_copy(update={"data_dir": tmp_path})
    assert isinstance(backends, BackendSettings)
    assert backends.analytics == "chdb"
    settings = StandaloneSettings(environment="development", backends=backends, auth=auth)
    clock = Clock(time.time_ns() // 1_000_000)
    app = standalone.create_app(settings, now_ms=clock)
    async with in_process(app, "http://standalone", timeout=60) as client:
        yield Standalone(client, auth, clock), app


async def features_of(platform: Standalone, project: str) -> dict[str, Any]:
    body = await read_users(platform, project, USERS)
    return {u["user_id"]: u["features"] for u in body["users"]}


def cell(value: Any) -> str:
    return "" if value is None else str(value)


async def test_archive_training_set_and_rebuild_on_standalone(
    running: tuple[Standalone, Any],
) -> None:
    platform, app = running
    project = unique("shop")
    pipeline_id, secret, _ = await configure(platform, project)
    events = scenario(platform.clock())
    await send_batch(platform.clients["ingest"], f"/ingest/{project}/{pipeline_id}", secret, events)
    await wait_until_served(platform, project, events, USERS)

    archive: AnalyticsSink = app.state.resources.analytics
    async with asyncio.timeout(BOUND_S):
        while True:  # the archive role runs beside compute: nothing to await on
            if await archive.count_events(project) >= len(events):
                break
            await asyncio.sleep(0.1)
    assert await archive.count_events(project) == len(events)

    # Serving's answer at a moment after every event was received, and the training set
    # for the same (user, moment) rows.
    platform.clock.now_ms = time.time_ns() // 1_000_000
    moment = platform.clock()
    served = {
        u["user_id"]: u["features"] for u in (await read_users(platform, project, USERS))["users"]
    }
    api, headers = platform.clients["api"], platform.bearer(project)
    base = f"/api/v1/projects/{project}"
    answer = await api.post(
        f"{base}/training-sets",
        json={"rows": [{"user_id": u, "timestamp": moment} for u in USERS]},
        headers=headers,
    )
    assert answer.status_code == 200, answer.text
    for row in csv.DictReader(io.StringIO(answer.text)):
        expected = {k: cell(v) for k, v in served[row["user_id"]].items()}
        assert {k: v for k, v in row.items() if k in expected} == expected
        assert row["timestamp"] == str(moment)

    rebuilt = await api.post(f"{base}/rebuild", headers=headers)
    assert rebuilt.status_code == 200, rebuilt.text
    assert rebuilt.json()["deferred"] == 0
    assert rebuilt.json()["written"] == 3  # dave has no events
    after = {
        u["user_id"]: u["features"] for u in (await read_users(platform, project, USERS))["users"]
    }
    assert after == served
