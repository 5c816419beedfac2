"""The README's first command, for real: `python -m standalone` (what `make run` execs
after installing) starts one process that answers /health, shows the OpenAPI page with
every role's endpoints, and prints a dev token that the API accepts."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.standalone import standalone_process


@pytest.fixture(scope="module")
def standalone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    with standalone_process(tmp_path_factory.mktemp("standalone")) as running:
        yield running.base_url, running.log_path


class TestStandaloneProcess:
    def test_health_and_readiness_answer_with_every_backend_up(
        self, standalone: tuple[str, Path]
    ) -> None:
        base, _ = standalone
        assert httpx.get(f"{base}/health").json() == {"status": "ok"}
        ready = httpx.get(f"{base}/ready")
        assert ready.status_code == 200
        backends = ready.json()["backends"]
        assert {"config_store", "cache", "event_log", "online_store"} <= set(backends)
        assert all(b["ok"] for b in backends.values())

    def test_docs_page_lists_every_roles_endpoints(self, standalone: tuple[str, Path]) -> None:
        base, _ = standalone
        assert "swagger" in httpx.get(f"{base}/docs").text.lower()
        paths = httpx.get(f"{base}/openapi.json").json()["paths"]
        assert "/api/v1/projects/{project_id}/pipelines" in paths
        assert "/api/v1/projects/{project_id}/deployments" in paths
        assert "/ingest/{project_id}/{pipeline_id}" in paths
        assert "/features/{project_id}/users/{user_id}" in paths

    def test_the_printed_dev_token_is_accepted_and_no_token_is_refused(
        self, standalone: tuple[str, Path]
    ) -> None:
        base, log_path = standalone
        match = re.search(r"export TOKEN=(\S+)", log_path.read_text())
        assert match, "no dev token printed"
        url = f"{base}/api/v1/projects/shop_1/pipelines"
        ok = httpx.get(url, headers={"Authorization": f"Bearer {match.group(1)}"})
        assert ok.status_code == 200
        assert ok.json()["items"] == []
        refused = httpx.get(url)
        assert refused.status_code == 401
        assert refused.json()["error"] == "Unauthorized"

    def test_webhook_info_points_storefronts_at_this_process(
        self, standalone: tuple[str, Path]
    ) -> None:
        base, log_path = standalone
        match = re.search(r"export TOKEN=(\S+)", log_path.read_text())
        assert match
        auth = {"Authorization": f"Bearer {match.group(1)}"}
        created = httpx.post(
            f"{base}/api/v1/projects/shop_2/pipelines",
            json={"name": "storefront", "template": "behavioral"},
            headers=auth,
        )
        assert created.status_code == 201
        pipeline_id = created.json()["id"]
        info = httpx.get(
            f"{base}/api/v1/projects/shop_2/pipelines/{pipeline_id}/webhook", headers=auth
        ).json()
        assert info["ingest_url"] == f"{base}/ingest/shop_2/{pipeline_id}"
