"""Third-party servers the manager uses, run as child processes for tests and benchmarks (Debian packages)."""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path

from dragonfly.cli.cluster import ManagedProcess, ProcessStartError, free_ports


class RedisProcess(ManagedProcess):
    """``redis-server`` on 127.0.0.1 with its data directory under ``workdir``, no persistence to disk."""

    def __init__(self, workdir: Path, *, port: int | None = None, ready_timeout: float = 30.0) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise ProcessStartError("redis-server is not installed (apt-get install redis-server)")
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_ports(1)[0]
        argv = [
            binary,
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(workdir),
            "--save", "",
            "--appendonly", "no",
            "--protected-mode", "yes",
        ]  # fmt: skip
        super().__init__("redis", argv, workdir / "redis.log", ready_timeout=ready_timeout)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def wait_ready(self, timeout: float) -> None:
        """Wait until the server answers PING."""
        deadline = time.monotonic() + timeout
        while not self.ping():
            if not self.running:
                raise ProcessStartError(f"redis exited with status {self.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise ProcessStartError(f"redis did not answer within {timeout:.0f}s:\n{self.log_tail()}")
            time.sleep(0.05)
