"""Running a process's app under uvicorn with the limits every process shares.

Every entry point (`python -m main`, the runtimes' `main()`, standalone) calls `serve`, so
the request-head limit and the shutdown deadline are the same everywhere.

Request head (request line + headers): uvicorn's default HTTP parser is httptools
(llhttp), which has no size limit at all: a 50 MB header was buffered whole (measured).
h11 has one (`h11_max_incomplete_event_size`) but parses in pure Python, slower on the
serving hot path. So the httptools protocol is kept and counts the bytes received while
a request's head is incomplete; past `max_header_bytes` it answers 431 and closes the
connection. The same number is given to h11 should anyone run with `--http h11`.

Shutdown: uvicorn waits for open requests before it runs the lifespan shutdown; with
no deadline, one request stuck on a dead backend kept SIGTERM from stopping the process.
Every backend call is bounded by now, and `_GRACEFUL_SHUTDOWN_S` bounds the wait anyway.
"""

from __future__ import annotations

from typing import Any

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.core.settings import ServiceSettings

# Longer than ingestion's produce deadline (INGEST_PRODUCE_TIMEOUT_SECONDS, 30 s), so a
# request whose events the log is acknowledging still gets its answer.
_GRACEFUL_SHUTDOWN_S = 35
_DEFAULT_HEAD_LIMIT = 64 * 1024


class HeadLimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, refusing a request head larger than the config's
    `h11_max_incomplete_event_size` with 431 (connection closed)."""

    def __init__(self, config: uvicorn.Config, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self._head_limit = config.h11_max_incomplete_event_size or _DEFAULT_HEAD_LIMIT
        self._head_bytes = 0
        self._in_head = True

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._head_bytes = True, 0

    def on_headers_complete(self) -> None:
        self._in_head, self._head_bytes = False, 0
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # Still inside a head after the parser took this chunk: all of it was head (or the
        # tail of a pipelined body, which only over-counts). Reads are at most a few
        # hundred KB, so memory stays near the limit.
        if self._in_head and not self.transport.is_closing():
            self._head_bytes += len(data)
            if self._head_bytes > self._head_limit:
                self._refuse_head()

    def _refuse_head(self) -> None:
        body = (
            '{"error":"RequestHeaderFieldsTooLarge","detail":"Request line and headers '
            f'exceed {self._head_limit} bytes"}}'
        ).encode()
        self.transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
            b"content-type: application/json\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n"
            b"connection: close\r\n\r\n" + body
        )
        self.transport.close()


def server_config(app: FastAPI, settings: ServiceSettings) -> uvicorn.Config:
    """Returns the uvicorn config every process runs with: its host and port, the
    head-limited protocol, the shutdown deadline, logging left to app/core/logging."""
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=HeadLimitedHttpToolsProtocol,
        h11_max_incomplete_event_size=settings.max_header_bytes,
        timeout_graceful_shutdown=_GRACEFUL_SHUTDOWN_S,
        log_config=None,
    )


def serve(app: FastAPI, settings: ServiceSettings) -> None:
    """Runs `app` until SIGINT/SIGTERM."""
    # Server.run picks the event loop as uvicorn.run does (uvloop when installed).
    uvicorn.Server(server_config(app, settings)).run()
