"""POST .../rebuild and .../training-sets on the config API (chDB archive, SQLite online
store): HTTP in and out, limits and errors in the one envelope."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq  # type: ignore[import-untyped]
import pytest

from app.core.settings import BackendSettings
from app.db.analytics import AnalyticsEvent
from app.db.clickhouse import ClickHouseClientSink
from app.services.training_set_service import MAX_ROWS
from runtime.archive.rebuild import rebuild_projects
from tests.api.conftest import Api, running_api

NOW = (int(time.time()) // 60) * 60_000
MINUTE = 60_000


@pytest.fixture
async def api(backend_settings: BackendSettings, tmp_path: Path) -> AsyncIterator[Api]:
    backends = backend_settings.model_copy(
        update={
            "config_store": "sqlite",
            "cache": "memory",
            "online_store": "sqlite",
            "analytics": "chdb",
            "data_dir": tmp_path,
        }
    )
    async with running_api(backends) as running:
        yield running


async def deploy_cart_count(api: Api) -> str:
    """A pipeline with a COUNT and a LAST of add_to_cart over 1h, deployed; its id."""
    pipeline = await api.create_active_pipeline()
    await api.create_feature(pipeline["id"], name="carts", time_windows=["1h"])
    await api.create_feature(
        pipeline["id"], name="sku", aggregation="LAST", field="product_id", time_windows=["1h"]
    )
    await api.ok("POST", "/deployments", 201)
    return str(pipeline["id"])


async def archive_carts(api: Api, pipeline_id: str, user: str, count: int) -> None:
    archive = api.resources.analytics
    assert isinstance(archive, ClickHouseClientSink)
    await archive.insert(
        [
            AnalyticsEvent(
                project_id=api.project,
                pipeline_id=pipeline_id,
                user_id=user,
                event="add_to_cart",
                event_id=f"{user}-{n}",
                event_time_ms=NOW - (n + 1) * MINUTE,
                received_at_ms=NOW - (n + 1) * MINUTE,
                properties={"product_id": f"sku-{n}"},
                log_offset=n,
            )
            for n in range(count)
        ]
    )


class TestRebuild:
    async def test_rebuild_writes_every_archived_user_and_says_so(self, api: Api) -> None:
        pipeline_id = await deploy_cart_count(api)
        await archive_carts(api, pipeline_id, "u1", 3)
        await archive_carts(api, pipeline_id, "u2", 2)
        body = await api.ok("POST", "/rebuild")
        assert body == {
            "project_id": api.project,
            "version": 1,
            "users": 2,
            "written": 2,
            "deferred": 0,
            "deferred_users": [],
        }
        store = api.resources.online_store
        assert store is not None
        record = await store.get(api.project, "u1")
        assert record is not None
        tiles = record.record["features"]["carts"]["w"]["1h"]
        assert sum(tiles.values()) == 3

    async def test_the_command_rebuilds_every_deployed_project_of_the_archive(
        self, api: Api
    ) -> None:
        pipeline_id = await deploy_cart_count(api)
        await archive_carts(api, pipeline_id, "u1", 4)
        reports = await rebuild_projects(api.resources.settings.backends, None)
        mine = [r for r in reports if r.project_id == api.project]
        assert [(r.users, r.written, r.deferred) for r in mine] == [(1, 1, 0)]

    async def test_a_project_never_deployed_is_a_409(self, api: Api) -> None:
        response = await api.request("POST", "/rebuild")
        assert response.status_code == 409
        assert response.json()["error"] == "ProjectNotDeployed"


async def wait_for_job(api: Api, status_url: str) -> dict[str, Any]:
    """Polls a job until it is finished (bounded: a hang fails the test)."""
    async with asyncio.timeout(120):
        while True:
            status = await api.client.get(status_url)
            assert status.status_code == 200, status.text
            body: dict[str, Any] = status.json()
            assert 0 <= body["rows_done"] <= body["rows_total"]
            if body["state"] in ("succeeded", "failed"):
                return body
            await asyncio.sleep(0.2)


class TestTrainingSets:
    async def test_json_rows_are_answered_as_csv_in_the_order_asked(self, api: Api) -> None:
        pipeline_id = await deploy_cart_count(api)
        await archive_carts(api, pipeline_id, "u1", 3)
        response = await api.request(
            "POST",
            "/training-sets",
            json={
                "rows": [
                    {"user_id": "u1", "timestamp": NOW},
                    {"user_id": "u1", "timestamp": "1970-01-01T00:00:00Z"},
                ],
                "features": ["sku_1h", "carts_1h"],
            },
        )
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/csv")
        assert response.text.splitlines() == [
            "user_id,timestamp,sku_1h,carts_1h",
            f"u1,{NOW},sku-0,3",
            "u1,0,,0",
        ]

    async def test_csv_rows_and_a_parquet_answer(self, api: Api) -> None:
        pipeline_id = await deploy_cart_count(api)
        await archive_carts(api, pipeline_id, "u2", 2)
        response = await api.request(
            "POST",
            "/training-sets?format=parquet&features=carts_1h",
            content=f"user_id,timestamp\nu2,{NOW}\nu3,{NOW}\n",
            headers={"content-type": "text/csv"},
        )
        assert response.status_code == 200, response.text
        table = pq.read_table(io.BytesIO(response.content))
        assert table.to_pylist() == [
            {"user_id": "u2", "timestamp": NOW, "carts_1h": 2},
            {"user_id": "u3", "timestamp": NOW, "carts_1h": 0},
        ]

    async def test_more_rows_than_the_synchronous_limit_run_as_a_job_with_progress(
        self, api: Api
    ) -> None:
        pipeline_id = await deploy_cart_count(api)
        await archive_carts(api, pipeline_id, "u1", 3)
        await archive_carts(api, pipeline_id, "u7", 2)
        lines = [f"u{n % 10},{NOW - (n % 7) * MINUTE}" for n in range(MAX_ROWS + 1)]
        response = await api.request(
            "POST",
            "/training-sets?features=carts_1h,sku_1h",
            content="user_id,timestamp\n" + "\n".join(lines) + "\n",
            headers={"content-type": "text/csv"},
        )
        assert response.status_code == 202, response.text
        job = response.json()
        assert job["state"] in ("queued", "running")
        assert job["rows_total"] == MAX_ROWS + 1
        assert response.headers["location"] == job["status_url"]
        status = await wait_for_job(api, job["status_url"])
        assert status["state"] == "succeeded", status
        assert status["rows_done"] == status["rows_total"] == MAX_ROWS + 1
        result = await api.client.get(status["result_url"])
        assert result.status_code == 200
        assert result.headers["content-type"].startswith("text/csv")
        # The job's answer is the synchronous one, row for row.
        answers = []
        for part in (lines[:MAX_ROWS], lines[MAX_ROWS:]):
            sync = await api.request(
                "POST",
                "/training-sets?features=carts_1h,sku_1h",
                content="user_id,timestamp\n" + "\n".join(part) + "\n",
                headers={"content-type": "text/csv"},
            )
            assert sync.status_code == 200
            answers.append(sync.text.splitlines())
        assert result.text.splitlines() == answers[0] + answers[1][1:]
        assert f"u1,{NOW},3,sku-0" in answers[0]

    async def test_a_small_set_as_a_job_in_parquet(self, api: Api) -> None:
        pipeline_id = await deploy_cart_count(api)
        await archive_carts(api, pipeline_id, "u2", 2)
        response = await api.request(
            "POST",
            "/training-sets?job=true&format=parquet",
            json={"rows": [{"user_id": "u2", "timestamp": NOW}], "features": ["carts_1h"]},
        )
        assert response.status_code == 202, response.text
        status = await wait_for_job(api, response.json()["status_url"])
        assert status["state"] == "succeeded"
        result = await api.client.get(status["result_url"])
        assert pq.read_table(io.BytesIO(result.content)).to_pylist() == [
            {"user_id": "u2", "timestamp": NOW, "carts_1h": 2}
        ]

    async def test_an_unknown_job_is_a_404_and_unknown_keys_are_refused_before_it_starts(
        self, api: Api
    ) -> None:
        await deploy_cart_count(api)
        missing = await api.request("GET", "/training-sets/jobs/nope")
        assert missing.status_code == 404
        assert missing.json()["error"] == "TrainingJobNotFound"
        result = await api.request("GET", "/training-sets/jobs/nope/result")
        assert result.status_code == 404
        refused = await api.request(
            "POST",
            "/training-sets?job=true",
            json={"rows": [{"user_id": "u", "timestamp": NOW}], "features": ["nope_1h"]},
        )
        assert refused.status_code == 422
        assert refused.json()["error"] == "UnknownTrainingFeature"

    @pytest.mark.parametrize(
        ("body", "headers", "code", "error"),
        [
            ('{"rows": [{"user_id": "u"}]}', {"content-type": "application/json"}, 422, None),
            ("user,when\nu,1\n", {"content-type": "text/csv"}, 422, "InvalidTrainingRows"),
            ("<rows/>", {"content-type": "application/xml"}, 415, "UnsupportedMediaType"),
            (
                '{"rows": [], "features": ["nope_1h"]}',
                {"content-type": "application/json"},
                422,
                "UnknownTrainingFeature",
            ),
        ],
    )
    async def test_bad_bodies_get_the_envelope(
        self, api: Api, body: str, headers: dict[str, str], code: int, error: str | None
    ) -> None:
        await deploy_cart_count(api)
        response = await api.request("POST", "/training-sets", content=body, headers=headers)
        assert response.status_code == code, response.text
        envelope = response.json()
        assert {"error", "detail"} <= set(envelope)
        if error is not None:
            assert envelope["error"] == error


async def test_without_an_archive_both_are_a_409(backend_settings: BackendSettings) -> None:
    backends = backend_settings.model_copy(
        update={"config_store": "sqlite", "cache": "memory", "online_store": "sqlite"}
    )
    async with running_api(backends) as api:
        for path in ("/rebuild", "/training-sets"):
            response = await api.request("POST", path, json={"rows": []})
            assert response.status_code == 409
            assert response.json()["error"] == "ArchiveNotConfigured"
