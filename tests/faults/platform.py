"""The four processes as an operator runs them (`python -m main`, `python -m
runtime.ingestion.main`, `runtime.compute.main`, `runtime.serving.main`), wired to servers
the case chooses, configured through the config API, read back through serving.

Production shape: ENVIRONMENT=production, MongoDB-wire config store, Kafka, Redis as cache
and online store. Timeouts are shortened through the documented settings only.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr
from pymongo import AsyncMongoClient
from pymongo.errors import PyMongoError

from app.core.settings import AuthSettings
from tests.conftest import unique
from tests.faults.scenario import COUNT_KEY, Event, configure, oracle
from tests.faults.sender import RetryingSender
from tests.support.apps import bearer
from tests.support.processes import ServiceProcess

# Bounds that turn a hang into a failure; not timing assertions.
START_BOUND_S = 90.0
CONVERGE_BOUND_S = 150.0


@dataclass
class Servers:
    """Where the case's Kafka, Redis and MongoDB-wire server are."""

    kafka_bootstrap: str
    redis_url: str
    mongodb_url: str


@dataclass
class Tenant:
    """A configured project: its pipeline, its webhook secret, a token for its features."""

    project_id: str
    pipeline_id: str
    secret: str
    headers: dict[str, str] = field(default_factory=dict)


class ProcessPlatform:
    """Config API, ingestion, serving and any number of computes (one consumer group)."""

    def __init__(self, workdir: Path, servers: Servers, **settings: str) -> None:
        self.auth = AuthSettings(secret=SecretStr(secrets.token_urlsafe(32)))
        self._workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.env: dict[str, str] = {
            # Nothing else from the test's environment: a stray INGEST_* or KAFKA_* there
            # must not change what the case runs.
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "ENVIRONMENT": "production",
            "JWT_SECRET": self.auth.secret.get_secret_value() if self.auth.secret else "",
            "LOG_LEVEL": "WARNING",
            "CONFIG_STORE": "mongodb",
            "MONGODB_URL": servers.mongodb_url,
            "MONGODB_DATABASE": unique("dps_faults"),
            "EVENT_LOG": "kafka",
            "KAFKA_BOOTSTRAP": servers.kafka_bootstrap,
            "KAFKA_TOPIC": unique("events"),
            "KAFKA_CONSUMER_GROUP": unique("compute"),
            "CACHE": "redis",
            "ONLINE_STORE": "redis",
            "REDIS_URL": servers.redis_url,
            "ANALYTICS": "none",
            "DATA_DIR": str(workdir),
            # The client retries for real; the rate limits are not what is tested.
            "INGEST_RATE_LIMIT_PROJECT": "1000000/minute",
            "INGEST_RATE_LIMIT_PIPELINE": "1000000/minute",
            # Small batches: many write+commit cycles for a kill to land in.
            "COMPUTE_MAX_BATCH_MESSAGES": "50",
            **settings,
        }
        # `python -m main`, as the README runs it (with the header limits uvicorn's CLI lacks).
        self.api = ServiceProcess.runtime("api", "main", "API_", self.env, workdir)
        self.ingest = ServiceProcess.runtime(
            "ingestion", "runtime.ingestion.main", "INGEST_", self.env, workdir
        )
        self.serving = ServiceProcess.runtime(
            "serving", "runtime.serving.main", "SERVING_", self.env, workdir
        )
        self.computes: list[ServiceProcess] = []
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(10.0, connect=2.0))

    @property
    def topic(self) -> str:
        return self.env["KAFKA_TOPIC"]

    def add_compute(self) -> ServiceProcess:
        compute = ServiceProcess.runtime(
            f"compute-{len(self.computes)}",
            "runtime.compute.main",
            "COMPUTE_",
            self.env,
            self._workdir,
        )
        self.computes.append(compute)
        return compute

    async def start(self, computes: int = 1) -> None:
        """Starts every process at once and returns when each answers /health."""
        for _ in range(computes):
            self.add_compute()
        everything = [self.api, self.ingest, self.serving, *self.computes]
        for process in everything:
            process.start()
        await asyncio.gather(*(p.wait_healthy(self.http, START_BOUND_S) for p in everything))

    async def ensure_up(self) -> None:
        """Starts every process that is not running and waits for each to be healthy."""
        everything = [self.api, self.ingest, self.serving, *self.computes]
        for process in everything:
            if not process.running:
                process.start()
        await asyncio.gather(*(p.wait_healthy(self.http, START_BOUND_S) for p in everything))

    async def stop(self) -> None:
        """SIGTERM to every process still running (each by its own pid), then drops the
        platform's config database (best effort: a case may have left its server down)."""
        for process in [self.ingest, *self.computes, self.serving, self.api]:
            await asyncio.to_thread(process.terminate)
        await self.http.aclose()
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            self.env["MONGODB_URL"], serverSelectionTimeoutMS=3000
        )
        try:
            await client.drop_database(self.env["MONGODB_DATABASE"])
        except PyMongoError:
            pass
        finally:
            await client.close()

    def log_tails(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.log_tail(1500)}"
            for p in [self.api, self.ingest, self.serving, *self.computes]
        )

    async def tenant(self) -> Tenant:
        """A new project configured and deployed through the config API."""
        project_id = unique("shop")
        headers = bearer(self.auth, "faults", [project_id])
        api = httpx.AsyncClient(base_url=self.api.url, timeout=30.0)
        async with api:
            pipeline_id, secret = await configure(api, headers, project_id)
        return Tenant(project_id, pipeline_id, secret, headers)

    def sender(self, tenant: Tenant) -> RetryingSender:
        return RetryingSender(
            lambda: self.ingest.url, tenant.project_id, tenant.pipeline_id, tenant.secret
        )

    async def served(self, tenant: Tenant, users: list[str]) -> list[dict[str, Any]]:
        response = await self.http.post(
            f"{self.serving.url}/features/{tenant.project_id}/users/batch",
            json={"user_ids": users},
            headers=tenant.headers,
        )
        assert response.status_code == 200, response.text
        features: list[dict[str, Any]] = [u["features"] for u in response.json()["users"]]
        return features

    async def wait_until_ready(self, tenant: Tenant) -> None:
        """Returns once ingestion takes the tenant's events: the deployed config reached
        it (a probe event of a user no case counts, answered 2xx)."""
        probe = Event(f"evt-probe-{tenant.project_id}", "probe", int(time.time() * 1000), "-", 1.0)
        async with asyncio.timeout(START_BOUND_S):
            await self.sender(tenant).probe(probe)

    async def converge(self, case: str, tenant: Tenant, accepted: list[Event]) -> None:
        """Waits until every user's served features equal the oracle over `accepted`;
        prints the case's expected vs counted events either way, fails on a mismatch
        after CONVERGE_BOUND_S."""
        users = sorted({e.user_id for e in accepted})
        expected = [oracle(accepted, u) for u in users]
        served: list[dict[str, Any]] = []
        try:
            async with asyncio.timeout(CONVERGE_BOUND_S):
                while True:
                    try:
                        served = await self.served(tenant, users)
                    except (httpx.TransportError, AssertionError):
                        served = []
                    if served == expected:
                        break
                    if not any(c.running for c in self.computes):
                        raise AssertionError(f"no compute is running\n{self.log_tails()}")
                    await asyncio.sleep(0.5)
        except TimeoutError:
            pass
        counted = sum(int(s.get(COUNT_KEY) or 0) for s in served)
        print(f"\n[faults] case {case}: expected {len(accepted)} events, counted {counted}")
        if served != expected:
            wrong = [
                (u, {k: (s.get(k), e[k]) for k in e if s.get(k) != e[k]})
                for u, s, e in zip(users, served or [{}] * len(users), expected, strict=True)
                if s != e
            ]
            raise AssertionError(
                f"case {case}: served != oracle for {len(wrong)} of {len(users)} users "
                f"(expected {len(accepted)} events, counted {counted}); "
                f"first (served, expected): {wrong[:3]}\n{self.log_tails()}"
            )
