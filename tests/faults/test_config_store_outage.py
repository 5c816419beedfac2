"""The config store (a private FerretDB) stopped and started again while a dashboard polls
the config API (`/ready` and a list) and an orchestrator polls every process's `/ready`:
every request is answered (503 with Retry-After while the store is away), the API reads and
writes again afterwards and still stops on SIGTERM, and the event stream, which needs no
config store, ends with every served feature equal to the oracle."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.faults.conftest import shared_servers, until
from tests.faults.platform import ProcessPlatform, Tenant
from tests.faults.scenario import EVENT_SCHEMA, make_events
from tests.support.own_ferretdb import OwnFerretDB

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.kafka, pytest.mark.redis]

# A request not answered within this is "hung" (the outage answer should take about 1 s).
ANSWER_BOUND_S = 10.0
# 503s the dashboard's list must have seen before the store comes back, and how long at
# least the store stays away.
OUTAGE_ANSWERS = 5
OUTAGE_S = 8.0


class Poller:
    """Polls GET endpoints in a loop; counts each answer's status (or "no answer")."""

    def __init__(self, targets: dict[str, tuple[str, dict[str, str]]]) -> None:
        self._targets = targets  # name -> (url, headers)
        self.answers: dict[str, Counter[str]] = {name: Counter() for name in targets}
        self.without_retry_after: list[str] = []
        # A figure for the report, not an assertion: how long the slowest 503 took.
        self.slowest_503_s: dict[str, float] = {}
        self._stopping = False

    async def _poll(self, name: str, url: str, headers: dict[str, str]) -> None:
        async with httpx.AsyncClient(timeout=ANSWER_BOUND_S) as client:
            while not self._stopping:
                started = time.monotonic()
                try:
                    response = await client.get(url, headers=headers)
                except httpx.TransportError as exc:  # hung (timeout) or not listening
                    self.answers[name][f"no answer ({type(exc).__name__})"] += 1
                    continue
                self.answers[name][str(response.status_code)] += 1
                slowest = self.slowest_503_s.get(name, 0.0)
                if response.status_code == 503:
                    self.slowest_503_s[name] = max(slowest, time.monotonic() - started)
                # An API request refused for an outage says when to retry; a /ready 503 is
                # the probe's answer ("not ready"), not a refused request.
                refused = response.status_code == 503 and "/ready" not in url
                if refused and "retry-after" not in response.headers:
                    self.without_retry_after.append(f"{name}: {response.text[:200]}")
                await asyncio.sleep(0.2)

    async def run(self) -> None:
        await asyncio.gather(*(self._poll(n, u, h) for n, (u, h) in self._targets.items()))

    def stop(self) -> None:
        self._stopping = True


def dashboard_targets(
    platform: ProcessPlatform, tenant: Tenant
) -> dict[str, tuple[str, dict[str, str]]]:
    pipelines = f"{platform.api.url}/api/v1/projects/{tenant.project_id}/pipelines"
    targets = {
        "api list": (pipelines, tenant.headers),
        "api /ready": (f"{platform.api.url}/ready", {}),
    }
    for process in [platform.ingest, platform.serving, *platform.computes]:
        targets[f"{process.name} /ready"] = (f"{process.url}/ready", {})
    return targets


async def test_ferretdb_restarted_while_polled_every_request_answered_and_api_works_after(
    tmp_path: Path,
) -> None:
    ferretdb = OwnFerretDB(tmp_path / "ferretdb")
    ferretdb.start()
    platform = ProcessPlatform(tmp_path / "platform", shared_servers(mongodb_url=ferretdb.url))
    try:
        await platform.start()
        tenant = await platform.tenant()
        await platform.wait_until_ready(tenant)
        events = make_events("f", 6000, users=20, now_ms=int(time.time() * 1000))
        sender = platform.sender(tenant)
        sending = asyncio.create_task(sender.send_all(events, concurrency=2, pause_s=0.02))
        poller = Poller(dashboard_targets(platform, tenant))
        polling = asyncio.create_task(poller.run())
        listed = poller.answers["api list"]
        await until(lambda: listed["200"] >= 5, "the list answering before the outage")

        ferretdb.kill()
        down_since = time.monotonic()
        await until(lambda: listed["503"] >= OUTAGE_ANSWERS, "503s from the list in the outage")
        # Longer than the drivers' few-second timeouts, so every pool really lost the server.
        await asyncio.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_since)))
        ferretdb.start()  # same port, same data
        answered_before = listed["200"]
        await until(lambda: listed["200"] > answered_before + 5, "the list answering again", 60)
        poller.stop()
        await polling
        sender.stop()
        await sending

        seen = {k: dict(v) for k, v in poller.answers.items()}
        slowest = {k: round(v, 2) for k, v in poller.slowest_503_s.items()}
        print(f"\n[faults] case f answers: {seen}; slowest 503 (s): {slowest}")
        for name, answers in seen.items():
            assert set(answers) <= {"200", "503"}, (name, answers)
        assert poller.without_retry_after == [], poller.without_retry_after[:3]

        async with httpx.AsyncClient(base_url=platform.api.url, timeout=10.0) as api:
            base = f"/api/v1/projects/{tenant.project_id}"
            made = await api.post(
                f"{base}/pipelines",
                json={"name": "after_outage", "category": "behavioral", "events": EVENT_SCHEMA},
                headers=tenant.headers,
            )
            assert made.status_code == 201, made.text
            pending = await api.get(f"{base}/deployments/pending", headers=tenant.headers)
            assert pending.status_code == 200, pending.text
            assert (await api.get("/ready")).status_code == 200
        await platform.converge("f", tenant, sender.accepted(events))
        assert await asyncio.to_thread(platform.api.terminate) is not None, (
            "the config API did not stop on SIGTERM"
        )
    finally:
        await platform.stop()
        ferretdb.kill()
