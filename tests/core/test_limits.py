"""Limits before work, on every process: a body over the limit is 413 and JSON nested too
deep is 422 before any route, auth or parser runs (app/core/limits.py); a request head
over the limit is 431 on a real socket (app/core/server.py)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from subprocess import DEVNULL

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from pydantic import SecretStr

import main
import standalone
from app.core.limits import MAX_JSON_DEPTH, nests_deeper_than
from app.core.server import server_config
from app.core.settings import (
    AuthSettings,
    BackendSettings,
    ComputeSettings,
    ConfigApiSettings,
    IngestionSettings,
    ServiceSettings,
    ServingSettings,
    StandaloneSettings,
)
from runtime.compute import main as compute_main
from runtime.ingestion import main as ingestion_main
from runtime.serving import main as serving_main
from tests.support.apps import in_process
from tests.support.own_ferretdb import REPO
from tests.support.own_redis import free_port

AUTH = AuthSettings(secret=SecretStr(secrets.token_urlsafe(32)))
LIMIT = 64 * 1024


def _embedded(tmp_path: Path) -> BackendSettings:
    return BackendSettings(
        config_store="sqlite",
        event_log="local",
        online_store="sqlite",
        cache="memory",
        analytics="none",
        data_dir=tmp_path,
    )


def _common(tmp_path: Path) -> dict[str, object]:
    return {
        "ENVIRONMENT": "development",
        "backends": _embedded(tmp_path),
        "auth": AUTH,
        "max_body_bytes": LIMIT,
    }


# Every process, built by its own create_app, and a POST path each really serves.
PROCESSES: dict[str, tuple[Callable[[Path], FastAPI], str]] = {
    "config_api": (
        lambda p: main.create_app(ConfigApiSettings(**_common(p))),  # type: ignore[arg-type]
        "/api/v1/projects/shop/pipelines",
    ),
    "ingestion": (
        lambda p: ingestion_main.create_app(IngestionSettings(**_common(p))),  # type: ignore[arg-type]
        "/ingest/shop/pl_1/batch",
    ),
    "serving": (
        lambda p: serving_main.create_app(ServingSettings(**_common(p))),  # type: ignore[arg-type]
        "/features/shop/users/batch",
    ),
    "compute": (
        lambda p: compute_main.create_app(ComputeSettings(**_common(p))),  # type: ignore[arg-type]
        "/consumer",
    ),
    "standalone": (
        lambda p: standalone.create_app(StandaloneSettings(**_common(p))),  # type: ignore[arg-type]
        "/features/shop/users/batch",
    ),
}


@pytest.fixture(params=sorted(PROCESSES))
async def process(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    build, path = PROCESSES[request.param]
    async with in_process(build(tmp_path), "http://test") as client:
        yield client, path


def _deep(levels: int) -> bytes:
    return b'{"user_ids": ' + b"[" * levels + b"]" * levels + b"}"


class TestBodyLimitBeforeAuthAndParsing:
    async def test_declared_length_over_the_limit_is_413_without_a_token(
        self, process: tuple[httpx.AsyncClient, str]
    ) -> None:
        client, path = process
        body = b'{"name": "' + b"x" * LIMIT + b'"}'
        response = await client.post(path, content=body, headers=_json())
        assert response.status_code == 413, response.text
        assert response.json()["error"] == "PayloadTooLarge"

    async def test_streamed_body_without_length_is_cut_at_the_limit(
        self, process: tuple[httpx.AsyncClient, str]
    ) -> None:
        client, path = process

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(100):  # 1.6 MB in all, no Content-Length
                yield b" " * 16 * 1024

        response = await client.post(path, content=chunks(), headers=_json())
        assert response.status_code == 413, response.text
        assert response.json()["error"] == "PayloadTooLarge"

    async def test_body_under_the_limit_reaches_the_route(
        self, process: tuple[httpx.AsyncClient, str]
    ) -> None:
        client, path = process
        response = await client.post(path, content=b'{"user_ids": ["u1"]}', headers=_json())
        # The route (or its auth, or the missing pipeline) answers: not the middleware.
        assert response.status_code not in (413, 500), response.text


class TestJsonDepth:
    async def test_deeply_nested_body_is_422_on_every_process(
        self, process: tuple[httpx.AsyncClient, str]
    ) -> None:
        client, path = process
        response = await client.post(path, content=_deep(20_000), headers=_json())
        assert response.status_code == 422, response.text
        assert response.json()["error"] == "MalformedJSON"

    async def test_deep_body_under_another_content_type_is_422_too(
        self, process: tuple[httpx.AsyncClient, str]
    ) -> None:
        # Serving's batch route reads its body raw and parsed this as JSON: a 500.
        client, path = process
        headers = {"content-type": "text/plain"}
        response = await client.post(path, content=_deep(20_000), headers=headers)
        assert response.status_code == 422, response.text
        assert response.json()["error"] == "MalformedJSON"

    async def test_nesting_at_the_limit_passes(
        self, process: tuple[httpx.AsyncClient, str]
    ) -> None:
        client, path = process
        response = await client.post(path, content=_deep(MAX_JSON_DEPTH - 1), headers=_json())
        assert f"deeper than {MAX_JSON_DEPTH}" not in response.text

    def test_brackets_inside_strings_do_not_count(self) -> None:
        assert not nests_deeper_than(b'{"a": "' + b"[" * 500 + b'"}', MAX_JSON_DEPTH)
        assert not nests_deeper_than(b'["\\"' + b"[" * 500 + b'"]', MAX_JSON_DEPTH)
        # An escaped backslash ends before the quote: the brackets after it are real.
        assert nests_deeper_than(b'["\\\\", ' + b"[" * 70 + b"]" * 71, MAX_JSON_DEPTH)

    def test_depth_is_counted_exactly(self) -> None:
        assert not nests_deeper_than(b"[" * 64 + b"]" * 64, 64)
        assert nests_deeper_than(b"[" * 65 + b"]" * 65, 64)
        assert nests_deeper_than(b'{"a":' * 65 + b"1" + b"}" * 65, 64)


def _json() -> dict[str, str]:
    return {"content-type": "application/json"}


async def _raw_request(port: int, head: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        await writer.drain()
    except ConnectionError:
        pass  # refused mid-send: the answer is already in the socket
    answer = await asyncio.wait_for(reader.read(4096), 10)
    writer.close()
    return answer


class TestHeaderLimit:
    async def test_one_megabyte_header_is_refused_with_431(self) -> None:
        app = FastAPI()

        @app.get("/ok")
        async def ok() -> dict[str, bool]:
            return {"ok": True}

        port = free_port()
        settings = ServiceSettings(ENVIRONMENT="development", port=port)
        server = uvicorn.Server(server_config(app, settings))
        task = asyncio.create_task(server.serve())
        try:
            while not server.started:  # noqa: ASYNC110 (uvicorn offers no start event)
                await asyncio.sleep(0.02)
            big = b"GET /ok HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 1024 * 1024 + b"\r\n\r\n"
            assert (await _raw_request(port, big)).startswith(b"HTTP/1.1 431")
            small = b"GET /ok HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
            assert (await _raw_request(port, small)).startswith(b"HTTP/1.1 200")
        finally:
            server.should_exit = True
            await task

    def test_every_process_runs_with_the_head_limit(self) -> None:
        settings = ServiceSettings(ENVIRONMENT="development", max_header_bytes=10_000)
        config = server_config(FastAPI(), settings)
        assert config.h11_max_incomplete_event_size == 10_000
        assert config.timeout_graceful_shutdown is not None


# Every process's own entry point, as deployed (`python -m ...`), on embedded backends.
ENTRY_POINTS = {
    "main": "API_PORT",
    "runtime.ingestion.main": "INGEST_PORT",
    "runtime.compute.main": "COMPUTE_PORT",
    "runtime.archive.main": "ARCHIVE_PORT",
    "runtime.serving.main": "SERVING_PORT",
    "standalone": "STANDALONE_PORT",
}


@pytest.mark.slow
@pytest.mark.parametrize("module", sorted(ENTRY_POINTS))
async def test_entry_point_refuses_a_large_head_and_body(module: str, tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "ENVIRONMENT": "development",
        "JWT_SECRET": secrets.token_urlsafe(32),
        "CONFIG_STORE": "sqlite",
        "EVENT_LOG": "local",
        "ONLINE_STORE": "sqlite",
        "CACHE": "memory",
        "ANALYTICS": "none",
        "DATA_DIR": str(tmp_path),
        "LOG_LEVEL": "CRITICAL",
        ENTRY_POINTS[module]: str(port),
    }
    if module == "runtime.archive.main":  # the archive is the analytics store's reader
        env["ANALYTICS"] = "chdb"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", module, cwd=REPO, env=env, stdout=DEVNULL, stderr=DEVNULL
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            for _ in range(900):  # a loaded machine takes a while to start a process
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get("/health")).status_code == 200:
                        break
                await asyncio.sleep(0.1)
            else:
                pytest.fail(f"{module} did not start")
            big_head = b"GET /health HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 1024 * 1024
            assert (await _raw_request(port, big_head + b"\r\n\r\n")).startswith(b"HTTP/1.1 431")
            # A body a little over the limit is read through: the client gets the 413.
            over = await client.post("/health", content=b" " * (1536 * 1024))
            assert over.status_code == 413, over.text
            assert over.json()["error"] == "PayloadTooLarge"
            # A huge one is refused on its declared length, before a byte of it is sent.
            huge = b"POST /health HTTP/1.1\r\nhost: x\r\ncontent-length: 100000000\r\n\r\n"
            assert (await _raw_request(port, huge)).startswith(b"HTTP/1.1 413")
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 60)
