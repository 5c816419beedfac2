"""A deployed project for the client tests, built through the config API the way a user
would (a pipeline from the behavioral template), and polling for what compute applies."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from dps_client import ConfigClient
from tests.support.standalone import RunningStandalone

T = TypeVar("T")


@dataclass(frozen=True)
class Deployed:
    project: str
    pipeline_id: str
    ingest_url: str
    secret: str


def deploy_behavioral(platform: RunningStandalone, project: str) -> Deployed:
    with ConfigClient(platform.base_url, platform.token, project) as config:
        pipeline = config.create_pipeline(
            {"name": "storefront", "template": "behavioral", "with_features": True}
        )
        config.set_pipeline_active(pipeline["id"], True)
        config.deploy("client tests")
        webhook = config.webhook(pipeline["id"])
    return Deployed(project, pipeline["id"], webhook["ingest_url"], webhook["secret"])


def eventually(read: Callable[[], T], done: Callable[[T], bool], limit_s: float = 30) -> T:
    """Returns the first `read()` that is `done` (compute applies events asynchronously);
    the last one after `limit_s`, for the caller's assertion to show."""
    deadline = time.monotonic() + limit_s
    value = read()
    while not done(value) and time.monotonic() < deadline:
        time.sleep(0.1)
        value = read()
    return value
