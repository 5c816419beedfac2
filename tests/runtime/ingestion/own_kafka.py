"""A private single-node KRaft Kafka for tests that stop the broker.

Never the shared broker from scripts/servers.sh: this one runs from the same cached jars
(`scripts/kafka.sh libs`) on free ports with its own data directory, and only this
process starts and stops it (by its own Popen handle).
"""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
LOG4J = REPO / "scripts" / "kafka" / "log4j2.xml"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _libs() -> str:
    out = subprocess.run(
        [str(REPO / "scripts" / "kafka.sh"), "libs"], check=True, capture_output=True, text=True
    )
    return out.stdout.strip()


class OwnKafka:
    """Start, stop (SIGTERM, controlled shutdown), restart on the same data, pause."""

    def __init__(self, workdir: Path) -> None:
        self.port = _free_port()
        self.controller_port = _free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self._dir = workdir
        self._props = workdir / "server.properties"
        self._log = workdir / "kafka.log"
        self._classpath = f"{_libs()}/*"
        self._process: subprocess.Popen[bytes] | None = None
        self._write_properties()
        self._format()

    def _java(self, *args: str) -> list[str]:
        return ["java", "-Xmx512m", f"-Dlog4j2.configurationFile={LOG4J}", *args]

    def _write_properties(self) -> None:
        host = "127.0.0.1"
        self._props.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.voters=1@{host}:{self.controller_port}",
                    f"listeners=PLAINTEXT://{host}:{self.port},"
                    f"CONTROLLER://{host}:{self.controller_port}",
                    f"advertised.listeners=PLAINTEXT://{host}:{self.port}",
                    "controller.listener.names=CONTROLLER",
                    "inter.broker.listener.name=PLAINTEXT",
                    "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                    f"log.dirs={self._dir / 'logs'}",
                    "num.partitions=4",
                    "default.replication.factor=1",
                    "min.insync.replicas=1",
                    "offsets.topic.replication.factor=1",
                    "offsets.topic.num.partitions=1",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "share.coordinator.state.topic.replication.factor=1",
                    "share.coordinator.state.topic.min.isr=1",
                    "group.initial.rebalance.delay.ms=0",
                    "num.network.threads=2",
                    "num.io.threads=2",
                    "",
                ]
            )
        )

    def _format(self) -> None:
        cluster_id = base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")
        if cluster_id.startswith("-"):
            cluster_id = "A" + cluster_id[1:]
        subprocess.run(
            self._java(
                "-cp",
                self._classpath,
                "kafka.tools.StorageTool",
                "format",
                "-t",
                cluster_id,
                "-c",
                str(self._props),
            ),
            check=True,
            capture_output=True,
        )

    def start(self, timeout_s: float = 120) -> None:
        """Starts the broker and returns once it accepts connections and says so."""
        assert self._process is None, "already running"
        log = self._log.open("ab")
        self._process = subprocess.Popen(
            self._java("-cp", self._classpath, "kafka.Kafka", str(self._props)),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        started_marker = self._log.stat().st_size
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"own kafka exited: {self._tail()}")
            with self._log.open("rb") as f:
                f.seek(max(0, started_marker - 1))
                if b"Kafka Server started" in f.read():
                    return
            time.sleep(0.5)
        raise RuntimeError(f"own kafka not ready after {timeout_s}s: {self._tail()}")

    def stop(self, timeout_s: float = 60) -> None:
        """Stops the broker with SIGTERM (a controlled shutdown); kills it if it hangs."""
        process, self._process = self._process, None
        if process is None:
            return
        process.send_signal(signal.SIGCONT)  # a paused broker would not see the SIGTERM
        process.terminate()
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)

    def pause(self) -> None:
        """Freezes the broker (SIGSTOP): connections stay open and nothing is answered,
        like a broker stalled by a long GC or a saturated disk."""
        assert self._process is not None, "not running"
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Lets a paused broker go on (SIGCONT); it answers what it received meanwhile."""
        assert self._process is not None, "not running"
        self._process.send_signal(signal.SIGCONT)

    def _tail(self) -> str:
        return self._log.read_text(errors="replace")[-2000:]
