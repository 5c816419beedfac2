"""A training-set job whose process is killed (kill -9 of the real standalone process,
by its pid) is reported failed after the restart, instead of running forever."""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

import httpx

from tests.client.helpers import deploy_behavioral
from tests.support.standalone import standalone_process

# Every user its own chunk, so a job of 3,000 users runs long enough to be killed in the
# middle; a heartbeat older than 2 s means its runner is gone.
ENV = {"STANDALONE_TRAINING_JOB_STALE_SECONDS": "2", "STANDALONE_TRAINING_JOB_CHUNK_USERS": "1"}
BOUND_S = 120.0  # turns a hang into a failure; not a timing assertion


def poll(client: httpx.Client, url: str, until: tuple[str, ...]) -> dict[str, object]:
    deadline = time.monotonic() + BOUND_S
    while True:
        body: dict[str, object] = client.get(url).raise_for_status().json()
        if body["state"] in until or time.monotonic() > deadline:
            return body
        time.sleep(0.1)


def test_a_job_whose_process_was_killed_is_failed_after_the_restart(tmp_path: Path) -> None:
    project = f"shop_{uuid.uuid4().hex[:10]}"
    with standalone_process(tmp_path, **ENV) as first:
        deploy_behavioral(first, project)
        headers = {"Authorization": f"Bearer {first.token}"}
        rows = "".join(f"user-{n},{int(time.time() * 1000)}\n" for n in range(3_000))
        with httpx.Client(base_url=first.base_url, headers=headers, timeout=30) as client:
            submitted = client.post(
                f"/api/v1/projects/{project}/training-sets?job=true",
                content="user_id,timestamp\n" + rows,
                headers={"content-type": "text/csv"},
            )
            assert submitted.status_code == 202, submitted.text
            status_url = submitted.json()["status_url"]
            running = poll(client, status_url, ("running", "succeeded", "failed"))
            assert running["state"] == "running", running
            assert running["rows_done"] < running["rows_total"]  # type: ignore[operator]
            os.kill(first.pid, signal.SIGKILL)

    with standalone_process(tmp_path, **ENV) as second:
        headers = {"Authorization": f"Bearer {second.token}"}
        with httpx.Client(base_url=second.base_url, headers=headers, timeout=30) as client:
            after = poll(client, status_url, ("failed", "succeeded"))
            assert after["state"] == "failed", after
            assert "stopped" in str(after["error"])
            assert after["rows_done"] < after["rows_total"]  # type: ignore[operator]
            result = client.get(f"{status_url}/result")
            assert result.status_code == 409
            assert result.json()["error"] == "TrainingJobNotFinished"
