"""One standalone platform (a real subprocess) for the client and CLI tests; each test
takes a project of its own, so they never see each other's config."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.support.standalone import RunningStandalone, standalone_process


@pytest.fixture(scope="session")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStandalone]:
    # Analytics plays no part in what the clients see; chDB only slows the start.
    with standalone_process(tmp_path_factory.mktemp("client-platform"), ANALYTICS="none") as p:
        yield p


@pytest.fixture
def project() -> str:
    return f"shop_{uuid.uuid4().hex[:10]}"
