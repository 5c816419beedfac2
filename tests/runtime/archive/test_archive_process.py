"""The archive process (`python -m runtime.archive.main`) on real Kafka and chDB:
SIGKILLed mid-stream, restarted, it still holds every event exactly once."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import httpx
import pytest

from app.core.settings import BackendSettings
from app.db import factory
from app.db.clickhouse import ChdbSink
from app.schemas.event import record_key
from tests.conftest import unique
from tests.runtime.archive.test_archive_worker import a_message
from tests.support.processes import ServiceProcess

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

EVENTS = 3000
BOUND_S = 120.0  # turns a hang into a failure; not a timing assertion


def archive_process(settings: BackendSettings, group: str, log_dir: Path) -> ServiceProcess:
    env = {
        **os.environ,
        "ENVIRONMENT": "development",
        "LOG_LEVEL": "WARNING",
        "EVENT_LOG": "kafka",
        "ANALYTICS": "chdb",
        "DATA_DIR": str(settings.data_dir),
        "KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "KAFKA_TOPIC": settings.kafka_topic,
        "ARCHIVE_CONSUMER_GROUP": group,
        # Small batches: many insert+commit cycles to be killed in the middle of.
        "ARCHIVE_MAX_BATCH_MESSAGES": "50",
    }
    return ServiceProcess.runtime("archive", "runtime.archive.main", "ARCHIVE_", env, log_dir)


async def status(client: httpx.AsyncClient, process: ServiceProcess) -> dict[str, object]:
    try:
        answer = await client.get(f"{process.url}/archive")
    except httpx.TransportError:
        return {}
    return dict(answer.json()) if answer.status_code in (200, 503) else {}


class TestKilledMidStream:
    async def test_every_event_is_archived_once_after_a_kill_and_a_restart(
        self, backend_settings: BackendSettings, tmp_path: Path
    ) -> None:
        settings = backend_settings.model_copy(update={"event_log": "kafka"})
        project = unique("proj")
        producer = factory.make_producer(settings)
        await producer.start()
        messages = [a_message(project, n, f"u{n % 37}") for n in range(EVENTS)]
        process = archive_process(settings, unique("archive"), tmp_path)
        try:
            records = [(record_key(project, m.user_id), m.encode()) for m in messages]
            await producer.produce_many(records[: EVENTS // 2])
            process.start()
            async with httpx.AsyncClient(timeout=5) as client:
                await process.wait_healthy(client)
                async with asyncio.timeout(BOUND_S):
                    while True:  # polling another process: no event to wait on
                        s = await status(client, process)
                        if int(str(s.get("batches_committed", 0))) >= 5:
                            break
                        await asyncio.sleep(0.02)
                process.kill()  # mid-stream: batches inserted, some not committed
                # The rest arrives while it is down, with copies of events already archived.
                await producer.produce_many(records[EVENTS // 2 :] + records[100:200])
                process.start()
                await process.wait_healthy(client)
                async with asyncio.timeout(BOUND_S):
                    while True:
                        s = await status(client, process)
                        lag = s.get("lag")
                        if isinstance(lag, dict) and lag and not any(lag.values()):
                            break
                        await asyncio.sleep(0.2)
            # A clean stop finishes the batch in flight; then the engine is free to open.
            # uvicorn re-raises the SIGTERM it handled, after the graceful shutdown.
            assert process.terminate() in (0, -signal.SIGTERM), process.log_tail()
        finally:
            process.terminate()
            await producer.stop()

        archive = ChdbSink(settings)
        await archive.initialize()
        try:
            assert await archive.count_events(project) == EVENTS
            rows = await archive.query_rows(
                "SELECT count() FROM (SELECT DISTINCT event_id FROM event_archive FINAL "
                "WHERE project_id = {p:String})",
                {"p": project},
            )
            assert rows[0][0] == EVENTS
        finally:
            await archive.close()
