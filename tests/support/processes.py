"""The platform's real processes as subprocesses of a test: started with an environment of
the test's choosing, killed (SIGKILL) or stopped (SIGTERM) by their own pid, restarted on
the same port. Only processes this module started are ever signalled."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from tests.support.own_redis import free_port

REPO = Path(__file__).resolve().parents[2]


def module_argv(module: str) -> list[str]:
    """A process by its module (`main`, `runtime.ingestion.main`...); each reads its port
    from the environment."""
    return [sys.executable, "-m", module]


class ServiceProcess:
    """One process of the platform on a fixed port, its output appended to a log file."""

    def __init__(
        self, name: str, argv: list[str], env: dict[str, str], port: int, log_dir: Path
    ) -> None:
        self.name = name
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self._argv = argv
        self._env = env
        self._log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def runtime(
        cls, name: str, module: str, prefix: str, env: dict[str, str], log_dir: Path
    ) -> ServiceProcess:
        """A runtime whose port comes from `<prefix>PORT` (e.g. `INGEST_PORT`)."""
        port = free_port()
        return cls(name, module_argv(module), {**env, f"{prefix}PORT": str(port)}, port, log_dir)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        assert not self.running, f"{self.name} is already running"
        with self._log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self._argv, cwd=REPO, env=self._env, stdout=log, stderr=subprocess.STDOUT
            )

    def kill(self) -> None:
        """SIGKILL, by pid: no shutdown code runs, like a crash or the OOM killer."""
        assert self.proc is not None, f"{self.name} was never started"
        assert self.running, f"{self.name} is not running"
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def terminate(self, timeout_s: float = 30) -> int | None:
        """SIGTERM and wait; SIGKILL if it does not exit in `timeout_s`. Returns the exit
        code of a graceful stop, None when it had to be killed or was not running."""
        if self.proc is None or not self.running:
            return None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)
            return None

    async def wait_healthy(self, client: httpx.AsyncClient, bound_s: float = 60) -> None:
        """Returns once GET /health answers 200; fails if the process exits or `bound_s`
        passes (a bound that turns a hang into a failure, not a timing assertion)."""
        async with asyncio.timeout(bound_s):
            while True:
                if not self.running:
                    raise AssertionError(f"{self.name} exited: {self.log_tail()}")
                try:
                    if (await client.get(f"{self.url}/health")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)

    async def metric(self, client: httpx.AsyncClient, name: str) -> float:
        """The value of an unlabelled Prometheus sample on /metrics (0 when absent or the
        process does not answer)."""
        try:
            text = (await client.get(f"{self.url}/metrics")).text
        except httpx.TransportError:
            return 0.0
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return 0.0

    def log_tail(self, chars: int = 3000) -> str:
        if not self._log_path.exists():
            return ""
        return self._log_path.read_text(errors="replace")[-chars:]
