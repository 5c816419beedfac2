"""The client's training-set call on a real standalone process with its chDB archive:
a set answered at once and the same set run as a job (submitted, polled with progress,
downloaded) are the same bytes; an unknown key is the platform's 422."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from dps_client import ApiError, ConfigClient
from tests.client.helpers import deploy_behavioral
from tests.support.standalone import RunningStandalone, standalone_process


@pytest.fixture(scope="module")
def archived(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStandalone]:
    with standalone_process(tmp_path_factory.mktemp("training-platform")) as platform:
        yield platform


def test_a_set_run_as_a_job_equals_the_set_answered_at_once(archived: RunningStandalone) -> None:
    project = f"shop_{uuid.uuid4().hex[:10]}"
    deploy_behavioral(archived, project)
    now = int(time.time() * 1000)
    rows = [(f"user-{n % 40}", now - n * 1000) for n in range(300)]
    seen: list[dict[str, Any]] = []
    with ConfigClient(archived.base_url, archived.token, project) as config:
        at_once = config.training_set(rows)
        as_job = config.training_set(rows, job=True, poll_s=0.1, on_progress=seen.append)
        with pytest.raises(ApiError) as refused:
            config.training_set(rows, ["nope_1h"])
    assert as_job == at_once
    lines = at_once.decode().splitlines()
    assert lines[0].startswith("user_id,timestamp,")
    assert len(lines) == 301
    assert seen[-1]["state"] == "succeeded"
    assert seen[-1]["rows_done"] == seen[-1]["rows_total"] == 300
    assert refused.value.status_code == 422
    assert refused.value.error == "UnknownTrainingFeature"
