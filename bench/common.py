"""Pieces the benchmarks share: child processes and their start-up waits, the uvicorn
call every measured server makes, a minimal keep-alive HTTP/1.1 client, percentiles,
and the feature config the compute and serving benchmarks load.

Not a test module; imported by bench/*_bench.py, which put the repository root on
sys.path before importing it.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from fastapi import FastAPI

from app.schemas.deployment import AggregateFeatureSnapshot, ConfigSnapshot, PipelineSnapshot
from app.schemas.pipeline import EventDefinition, EventField

ROOT = Path(__file__).resolve().parents[1]
START_BOUND_S = 60.0
AGGREGATIONS = ["COUNT", "SUM", "AVG", "MIN", "MAX", "COUNT_DISTINCT", "LAST", "FIRST"]
FIELD_OF = {"COUNT": None, "COUNT_DISTINCT": "product_id", "LAST": "product_id"}
FIELD_OF |= {"FIRST": "product_id", "SUM": "price", "AVG": "price", "MIN": "price"}
FIELD_OF |= {"MAX": "price", "LAST_N": "product_id", "TOP_K": "product_id", "RECENCY": None}
# What a recommender reads beyond the eight basic aggregations (issue 11): the mix
# `--mix recommender` of serving_bench cycles through all eleven, every other feature
# filtered on the price.
RECOMMENDER_AGGREGATIONS = [*AGGREGATIONS, "LAST_N", "TOP_K", "RECENCY"]
SIZE_OF = {"LAST_N": 10, "TOP_K": 5}
PRICE_FILTER = {"all": [{"field": "price", "op": "gte", "value": 20}]}
EVENT_NAMES = ["add_to_cart", "page_view", "purchase"]


# -- processes ------------------------------------------------------------------------------
_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """Returns the CPU time (user + system) `pid` has used so far, from /proc: per request
    a steadier figure than requests/s on a machine whose cores other work shares."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def free_port() -> int:
    """Returns a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def process(
    args: list[str], env: dict[str, str], log: Path, cwd: Path = ROOT
) -> Iterator[subprocess.Popen[bytes]]:
    """Runs a child process in `cwd` (the repository) with its output in `log`; yields
    it, and on exit stops it by its own handle (terminate, kill after 15 s)."""
    with log.open("wb") as out:
        child = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=cwd)
        try:
            yield child
        finally:
            child.terminate()
            try:
                child.wait(15)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


def wait_port(port: int, child: subprocess.Popen[bytes], log: Path) -> None:
    """Returns once 127.0.0.1:`port` accepts connections; raises SystemExit (with the tail
    of `log`) if `child` exits first or START_BOUND_S passes."""
    deadline = time.monotonic() + START_BOUND_S
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise SystemExit(f"server exited; see {log}:\n{log.read_text()[-2000:]}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise SystemExit(f"server on {port} did not start; see {log}")


def wait_http(
    url: str, child: subprocess.Popen[bytes], log: Path, bound_s: float = START_BOUND_S
) -> None:
    """Returns once GET `url` answers below 500; raises SystemExit (with the tail of `log`)
    if `child` exits first or `bound_s` passes."""
    deadline = time.monotonic() + bound_s
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise SystemExit(f"{url} exited; see {log}:\n{log.read_text()[-2000:]}")
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{url} did not start; see {log}")


def serve(app: FastAPI, port: int) -> None:
    """Runs `app` until killed, with the uvicorn call the runtime processes make
    (`uvicorn.run(app, host, port, log_config=None)`), so a bare endpoint and the real
    process differ only in their app."""
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=port, log_config=None)


# -- a minimal keep-alive HTTP/1.1 client ----------------------------------------------------
class Connection:
    """One keep-alive connection. A full client (httpx) costs more CPU per request than the
    servers measured here, and shares their two cores."""

    def __init__(self, port: int, headers: dict[str, str] | None = None) -> None:
        self._port = port
        self._headers = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    @classmethod
    async def open(cls, port: int) -> Connection:
        """Returns a connection already connected, so no request pays for the connect."""
        conn = cls(port)
        await conn._connect()
        return conn

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is None or self._writer is None:
            self._reader, self._writer = await asyncio.open_connection("127.0.0.1", self._port)
        return self._reader, self._writer

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        """Sends one request with this connection's headers; returns (status, body)."""
        head = (
            f"{method} {path} HTTP/1.1\r\nhost: bench\r\n{self._headers}"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
        )
        return await self.send(head.encode() + body)

    async def send(self, raw: bytes) -> tuple[int, bytes]:
        """Sends one prebuilt request; returns (status, body) once the whole response is
        read."""
        reader, writer = await self._connect()
        writer.write(raw)
        lines = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        length = next(
            (
                int(line.split(":", 1)[1])
                for line in lines
                if line[:15].lower() == "content-length:"
            ),
            0,
        )
        return status, await reader.readexactly(length)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def raw_request(path: str, body: bytes, headers: dict[str, str]) -> bytes:
    """Returns a complete POST request, to be sent by `Connection.send`."""
    head = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
    head += [f"Content-Length: {len(body)}", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


# -- figures --------------------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float:
    """Returns the value at quantile `q` (0..1) of `values` (nearest rank, no interpolation)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- config ---------------------------------------------------------------------------------
def feature_snapshot(
    project_id: str,
    pipeline_id: str,
    features: int,
    windows: list[str],
    *,
    pipeline_name: str,
    name_format: str = "f{n}_{aggregation}",
    recommender: bool = False,
) -> ConfigSnapshot:
    """Returns a deployed config of one active pipeline (EVENT_NAMES, with product_id and
    price) and `features` features cycling through AGGREGATIONS and EVENT_NAMES, each over
    `windows`. Feature n is named `name_format` (n, aggregation in lower case). With
    `recommender`, they cycle through RECOMMENDER_AGGREGATIONS, odd ones filtered."""
    kinds = RECOMMENDER_AGGREGATIONS if recommender else AGGREGATIONS
    fields = [EventField(name="product_id", type="string"), EventField(name="price", type="number")]
    return ConfigSnapshot(
        project_id=project_id,
        version=1,
        pipelines=[
            PipelineSnapshot(
                id=pipeline_id,
                name=pipeline_name,
                category="behavioral",
                status="active",
                events=[EventDefinition(name=e, fields=fields) for e in EVENT_NAMES],
            )
        ],
        features=[
            AggregateFeatureSnapshot(
                id=f"{n:024x}",
                name=name_format.format(n=n, aggregation=kinds[n % len(kinds)].lower()),
                pipeline_id=pipeline_id,
                source_event=EVENT_NAMES[n % len(EVENT_NAMES)],
                aggregation=kinds[n % len(kinds)],
                field=FIELD_OF[kinds[n % len(kinds)]],
                time_windows=windows,
                size=SIZE_OF.get(kinds[n % len(kinds)]),
                filter=PRICE_FILTER if recommender and n % 2 else None,
                enabled=True,
            )
            for n in range(features)
        ],
    )
