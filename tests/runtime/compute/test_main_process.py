"""The compute process (`python -m runtime.compute.main`) on real Kafka and Redis:
SIGKILLed mid-stream and restarted, it still ends exactly at the oracle's state."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.core.consumer_loop import wall_clock_ms
from app.core.settings import BackendSettings
from app.tiles.record import AppliedEvent, apply_batch, serve
from runtime.compute.specs import build_specs, event_key
from tests.conftest import unique
from tests.factories import new_id
from tests.runtime.compute.harness import ComputeKit
from tests.runtime.compute.oracle import (
    RawEvent,
    all_aggregations,
    assert_same_values,
    config,
    oracle_values,
    pipeline,
)

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[3]
# Bounds that turn a hang into a failure; not timing assertions.
START_BOUND_S = 60.0
CATCH_UP_BOUND_S = 120.0
EVENTS = 3000
USERS = 25


async def until(check: Callable[[], Awaitable[bool]], bound_s: float, every_s: float) -> None:
    """Returns once `check()` is true; fails after `bound_s`."""
    async with asyncio.timeout(bound_s):
        while True:
            if await check():
                return
            await asyncio.sleep(every_s)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class ComputeProcess:
    """`python -m runtime.compute.main` with the test's backends in its environment."""

    def __init__(self, settings: BackendSettings, log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log_path = log_path
        b = settings
        self._env = {
            **os.environ,
            "ENVIRONMENT": "development",
            "LOG_LEVEL": "WARNING",
            "CONFIG_STORE": "sqlite",
            "EVENT_LOG": "kafka",
            "ONLINE_STORE": b.online_store,
            "CACHE": "redis",
            "ANALYTICS": "none",
            "DATA_DIR": str(b.data_dir),
            "KAFKA_BOOTSTRAP": b.kafka_bootstrap,
            "KAFKA_TOPIC": b.kafka_topic,
            "KAFKA_CONSUMER_GROUP": b.kafka_consumer_group,
            "REDIS_URL": b.redis_url,
            "COMPUTE_PORT": str(self.port),
            # Small batches: many write+commit cycles to be killed in the middle of.
            "COMPUTE_MAX_BATCH_MESSAGES": "40",
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self._log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "runtime.compute.main"],
                cwd=REPO_ROOT,
                env=self._env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def terminate(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)

    def ensure_dead(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill()

    async def get(self, client: httpx.AsyncClient, path: str) -> httpx.Response | None:
        """The response, or None while the process is not listening yet."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"compute exited with {self.proc.returncode}: {self.log_tail()}")
        try:
            return await client.get(self.url + path)
        except httpx.TransportError:
            return None

    async def metric(self, client: httpx.AsyncClient, name: str) -> float | None:
        response = await self.get(client, "/metrics")
        if response is None:
            return None
        for line in response.text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return None

    def log_tail(self) -> str:
        return self._log_path.read_text(errors="replace")[-3000:]


@pytest.fixture
async def kit(backend_settings: BackendSettings) -> AsyncIterator[ComputeKit]:
    k = ComputeKit(backend_settings.model_copy(update={"online_store": "redis"}), wall_clock_ms())
    await k.start()
    try:
        yield k
    finally:
        await k.close()


class TestKilledMidStream:
    async def test_sigkill_mid_stream_then_restart_ends_exactly_at_the_oracle(
        self, kit: ComputeKit, tmp_path: Path
    ):
        project, p = unique("shop"), new_id()
        features = all_aggregations(p, ["5m", "1h", "24h"])
        snapshot = config(project, 1, [pipeline(p, "add_to_cart")], features)
        await kit.publish(snapshot)
        rng = random.Random(9)
        start = wall_clock_ms()
        users = [f"user-{i}" for i in range(USERS)]
        events = [
            RawEvent(
                rng.choice(users),
                p,
                "add_to_cart",
                start - rng.randrange(0, 30_000),
                {"price": rng.randrange(1, 500) / 4, "product_id": f"sku-{rng.randrange(20)}"},
            )
            for _ in range(EVENTS)
        ]
        await kit.produce(project, events, version=1)
        compute = ComputeProcess(kit.settings, tmp_path / "compute.log")

        try:
            async with httpx.AsyncClient(timeout=5.0) as client:
                compute.start()

                async def some_batches_committed() -> bool:
                    return (await compute.metric(client, "compute_batches_total") or 0) >= 3

                await until(some_batches_committed, START_BOUND_S, every_s=0.01)
                compute.kill()
                committed_at_kill = sum((await kit.committed()).values())
                assert 0 < committed_at_kill < EVENTS, "the kill did not land mid-stream"

                compute.start()

                async def caught_up() -> bool:
                    return sum((await kit.committed()).values()) == EVENTS

                await until(caught_up, CATCH_UP_BOUND_S, every_s=0.2)
                ready = await compute.get(client, "/ready")
                assert ready is not None
                assert ready.status_code == 200, ready.text
                assert ready.json()["backends"]["compute_consumer"]["ok"] is True
                consumer = await compute.get(client, "/consumer")
                assert consumer is not None
                assert consumer.json()["running"] is True
                assert consumer.json()["batches_committed"] > 0
                # uvicorn shuts down gracefully, then re-raises the signal it caught.
                assert compute.terminate() in (0, -signal.SIGTERM), compute.log_tail()
        finally:
            compute.ensure_dead()

        now = wall_clock_ms()
        specs = build_specs(snapshot)
        for user in users:
            mine = [e for e in events if e.user_id == user]
            stored = await kit.store.get(project, user)
            assert stored is not None
            assert_same_values(
                serve(stored.record, specs.specs, now), oracle_values(features, mine, now)
            )
            assert stored.record["features"] == _tile_state(specs.by_event, mine, now)


def _tile_state(by_event: Any, events: list[RawEvent], now: int) -> dict[str, Any]:
    applied = [
        AppliedEvent(0, i, event_key(e.pipeline_id, e.event), e.t_ms, e.properties)
        for i, e in enumerate(events)
    ]
    features: dict[str, Any] = apply_batch(None, by_event, applied, now).record["features"]
    return features
