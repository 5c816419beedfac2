"""The README's first command, for real: `python -m standalone` (what `make run` execs
after installing) starts one process that answers /health, shows the OpenAPI page with
every role's endpoints, and prints a dev token that the API accepts."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def standalone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    data_dir = tmp_path_factory.mktemp("standalone")
    log_path = data_dir / "out.log"
    port = _free_port()
    env = {
        **os.environ,
        "DATA_DIR": str(data_dir),
        "STANDALONE_PORT": str(port),
        "ENVIRONMENT": "development",
    }
    env.pop("JWT_SECRET", None)
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "standalone"], cwd=ROOT, env=env, stdout=log, stderr=log
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"standalone exited early:\n{log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            pytest.fail(f"standalone did not answer /health:\n{log_path.read_text()[-3000:]}")
        yield base, log_path
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


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
