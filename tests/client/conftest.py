"""One standalone platform (a real subprocess) for the client and CLI tests; each test
takes a project of its own, so they never see each other's config."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.support.standalone import RunningStandalone, standalone_process


@pytest.fixture(scope="session")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStandalone]:
    # With its archive (chDB, standalone's default): `dps apply` waits for a backfill.
    with standalone_process(tmp_path_factory.mktemp("client-platform")) as p:
        yield p


@pytest.fixture
def project() -> str:
    return f"shop_{uuid.uuid4().hex[:10]}"
