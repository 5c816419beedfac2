"""A private FerretDB for outage tests: the binary `scripts/ferretdb.sh install` built, on a
free port with its own SQLite data directory, stopped and restarted by pid (same port, same
data, like a database server that went away and came back). The shared test server
(scripts/ferretdb.sh) is never touched."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

from tests.support.own_redis import free_port

REPO = Path(__file__).resolve().parents[2]
_VERSION = os.environ.get("DPS_FERRETDB_VERSION", "v1.24.2")


def ferretdb_binary() -> Path:
    """Returns the cached FerretDB binary, building it first if needed (a minute or two on a
    cold machine). Raises subprocess.CalledProcessError when the build fails."""
    cache = Path(os.environ.get("DPS_CACHE", Path.home() / ".cache" / "dps"))
    binary = cache / f"ferretdb-{_VERSION.removeprefix('v')}" / "ferretdb"
    if not binary.exists():
        subprocess.run([str(REPO / "scripts" / "ferretdb.sh"), "install"], check=True)
    return binary


class OwnFerretDB:
    """One FerretDB process (SQLite handler) that a test may stop and start again."""

    def __init__(self, data_dir: Path) -> None:
        self.port = free_port()
        self.data_dir = data_dir
        self.binary = ferretdb_binary()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/"

    def start(self, timeout_s: float = 30) -> None:
        """Starts the server and returns once its port accepts connections.

        Raises RuntimeError if it exits or does not listen within `timeout_s`."""
        assert self.proc is None, "already running"
        (self.data_dir / "sqlite").mkdir(parents=True, exist_ok=True)
        (self.data_dir / "state").mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                str(self.binary),
                f"--listen-addr=127.0.0.1:{self.port}",
                "--handler=sqlite",
                f"--sqlite-url=file:{self.data_dir / 'sqlite'}/",
                f"--state-dir={self.data_dir / 'state'}",
                "--telemetry=disable",
                "--debug-addr=-",
                "--log-level=warn",
            ],
            env={**os.environ, "FERRETDB_TELEMETRY": "disable", "DO_NOT_TRACK": "1"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ferretdb on port {self.port} exited at start")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"ferretdb on port {self.port} did not listen")

    def stop(self) -> None:
        """Stops the server the way an operator does (SIGTERM, by its pid), killing it if
        it is not gone within 10 s; the data directory stays for the next start."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def kill(self) -> None:
        """Kills the server (SIGKILL, by its pid) and waits for it to be gone; the data
        directory stays for the next start."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None
