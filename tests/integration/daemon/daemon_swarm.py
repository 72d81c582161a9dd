"""The daemon integration tests' launcher: a counting HTTP origin, a scheduler and dfdaemons.

Every process is real (``python -m dragonfly.cli.scheduler`` / ``dragonfly.cli.dfdaemon``), listens on free
ports of 127.0.0.1, and is waited for through its ``dragonfly: ... ready`` line with a timeout.
"""

from __future__ import annotations

import http.server
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import yaml
from dragonfly_api import common_pb2, dfdaemon_pb2, dfdaemon_pb2_grpc

REPO = Path(__file__).resolve().parents[3]
READY_TIMEOUT = 30.0
LOG_LEVEL = os.environ.get("DFD_LOG_LEVEL", "info")
_LISTENING = re.compile(r"^dragonfly: (.+) listening on (\S+)$")


class CountingOrigin:
    """An HTTP/1.1 origin with Range support that counts the body bytes it sends."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.bytes_sent = 0
        self._lock = threading.Lock()
        origin = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                path = origin.directory / self.path.lstrip("/")
                if "/" in self.path.lstrip("/") or not path.is_file():
                    self.send_error(404)
                    return
                size = path.stat().st_size
                match = re.fullmatch(r"bytes=(\d+)-(\d+)", self.headers.get("Range", ""))
                start, end = 0, size - 1
                if match and size:
                    start, end = int(match.group(1)), min(int(match.group(2)), size - 1)
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
                else:
                    self.send_response(200)
                with open(path, "rb") as file:
                    file.seek(start)
                    body = file.read(end + 1 - start)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                with origin._lock:
                    origin.bytes_sent += len(body)

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/{name}"

    def add_file(self, name: str, size: int) -> bytes:
        data = os.urandom(size)
        (self.directory / name).write_bytes(data)
        return data

    def __enter__(self) -> CountingOrigin:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


@dataclass
class Process:
    """A child process of the suite with its log file and the addresses it printed."""

    name: str
    argv: list[str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    offset: int = 0
    listening: dict[str, str] = field(default_factory=dict)

    def start(self) -> None:
        env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
        with open(self.log_path, "ab") as log:
            self.offset = log.tell()
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Wait for this run's ready line (the log is appended to across restarts)."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while True:
            with open(self.log_path, "rb") as log:
                log.seek(self.offset)
                lines = log.read().decode(errors="replace").splitlines()
            self.listening = {m.group(1): m.group(2) for m in map(_LISTENING.match, lines) if m}
            if any(re.fullmatch(r"dragonfly: \S+ ready", line) for line in lines):
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n" + "\n".join(lines[-30:]))
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not ready within {timeout}s:\n" + "\n".join(lines[-30:]))
            time.sleep(0.05)

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM and wait; return the exit status (SIGKILL and None if it hangs)."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            return None


class Swarm:
    """One scheduler and named dfdaemons in a short temporary directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.processes: dict[str, Process] = {}
        self.scheduler_addr = ""

    def start_scheduler(self) -> None:
        config = self.root / "scheduler.yaml"
        config.write_text(yaml.safe_dump({"server": {"host": "127.0.0.1", "port": 0}, "metrics": {"enable": False}}))
        proc = Process(
            "scheduler",
            [sys.executable, "-m", "dragonfly.cli.scheduler", "--config", str(config), "--log-level", LOG_LEVEL],
            self.root / "scheduler.log",
        )
        proc.start()
        proc.wait_ready()
        self.processes["scheduler"] = proc
        self.scheduler_addr = proc.listening["scheduler"]

    def daemon_config(self, name: str, *, seed: bool = False, scheduler: str | None = None, **extra: Any) -> Path:
        config: dict[str, Any] = {
            "host": {"hostname": name, "ip": "127.0.0.1"},
            "seedPeer": {"enable": seed},
            "scheduler": {"addrs": [scheduler or self.scheduler_addr], "announceInterval": "5s"},
            "download": {"server": {"socketPath": str(self.root / f"{name}.sock")}, "collectedPieceTimeout": "10s"},
            "upload": {"server": {"ip": "127.0.0.1", "port": 0}},
            "storage": {"dir": str(self.root / name), "keep": True, "server": {"ip": "127.0.0.1", "tcpPort": 0}},
            "metrics": {"server": {"ip": "127.0.0.1", "port": 0}},
            "health": {"server": {"ip": "127.0.0.1", "port": 0}},
        }
        for section, values in extra.items():
            config.setdefault(section, {}).update(values)
        path = self.root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    def start_daemons(self, names: dict[str, Path]) -> None:
        """Start several daemons at once and wait for all of them."""
        for name, config in names.items():
            proc = Process(
                name,
                [sys.executable, "-m", "dragonfly.cli.dfdaemon", "--config", str(config)],
                self.root / f"{name}.log",
            )
            proc.start()
            self.processes[name] = proc
        for name in names:
            self.processes[name].wait_ready()

    def restart(self, name: str) -> int | None:
        proc = self.processes[name]
        status = proc.stop()
        proc.start()
        proc.wait_ready()
        return status

    def socket(self, name: str) -> str:
        return self.processes[name].listening["download"]

    def stop(self) -> None:
        for name, proc in reversed(self.processes.items()):
            if name != "scheduler":
                proc.stop()
        if "scheduler" in self.processes:
            self.processes["scheduler"].stop()


@dataclass
class DownloadResult:
    task_id: str
    peer_id: str
    content_length: int
    bytes_by_traffic: dict[str, int]
    parents: set[str]
    seconds: float


def download(
    socket_path: str, url: str, output: Path | None, *, timeout: float = 60.0, **fields: Any
) -> DownloadResult:
    """Download through a daemon's local API; raise grpc.RpcError on failure."""
    request = common_pb2.Download(url=url, **fields)
    if output is not None:
        request.output_path = str(output)
    began = time.monotonic()
    traffic: dict[str, int] = {}
    parents: set[str] = set()
    task_id = peer_id = ""
    content_length = -1
    with grpc.insecure_channel(f"unix:{socket_path}") as channel:
        stub = dfdaemon_pb2_grpc.DfdaemonDownloadStub(channel)
        for response in stub.DownloadTask(dfdaemon_pb2.DownloadTaskRequest(download=request), timeout=timeout):
            if response.HasField("download_task_started_response"):
                task_id, peer_id = response.task_id, response.peer_id
                content_length = response.download_task_started_response.content_length
                continue
            piece = response.download_piece_finished_response.piece
            name = common_pb2.TrafficType.Name(piece.traffic_type)
            traffic[name] = traffic.get(name, 0) + piece.length
            if piece.parent_id:
                parents.add(piece.parent_id)
    return DownloadResult(task_id, peer_id, content_length, traffic, parents, time.monotonic() - began)
