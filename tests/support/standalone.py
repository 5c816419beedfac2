"""The standalone platform (`python -m standalone`, what `make run` starts) as a real
subprocess of a test: its own data dir and port, its printed dev token read back from
its output. Only the process started here is ever signalled (by its pid)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support.own_redis import free_port

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class RunningStandalone:
    base_url: str
    token: str
    log_path: Path
    data_dir: Path
    pid: int


def _token(log_path: Path) -> str:
    match = re.search(r"export TOKEN=(\S+)", log_path.read_text())
    if match is None:
        pytest.fail(f"standalone printed no dev token:\n{log_path.read_text()[-3000:]}")
    return match.group(1)


@contextmanager
def standalone_process(data_dir: Path, **env: str) -> Iterator[RunningStandalone]:
    """Starts the standalone process on a free port with `data_dir`, waits for /health,
    yields it, and stops it (SIGTERM, then SIGKILL after 20 s)."""
    log_path = data_dir / "out.log"
    port = free_port()
    full_env = {
        **os.environ,
        "DATA_DIR": str(data_dir),
        "STANDALONE_PORT": str(port),
        "ENVIRONMENT": "development",
        **env,
    }
    full_env.pop("JWT_SECRET", None)
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "standalone"], cwd=REPO, env=full_env, stdout=log, stderr=log
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"standalone exited early:\n{log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            pytest.fail(f"standalone did not answer /health:\n{log_path.read_text()[-3000:]}")
        yield RunningStandalone(base, _token(log_path), log_path, data_dir, proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
