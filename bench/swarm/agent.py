"""Run one client on one host and report its timeline as JSON lines on stdout.

The runner starts one agent per host (inside the host's namespace), waits for every agent's ``ready`` event and
then writes ``go`` to all of them at once, so all clients start together. Events, each with wall time ``t``:
``ready``, ``start``, ``first_byte`` (when known), ``finish`` {ok, bytes, by_source, error}. BitTorrent agents keep
seeding after ``finish`` until the runner writes ``stop`` (or closes stdin); the origin's seeding agent then reports
``stats`` {upload_bytes}. A ``files`` agent fetches many files one after the other (``bench/small_files.py``).

    python -m bench.swarm.agent '{"kind": "curl", "url": ..., "output": ..., "rate": 0}'
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from typing import Any

_POLL = 0.05


def emit(event: str, **fields: Any) -> None:
    """Write one event line to stdout."""
    sys.stdout.write(json.dumps({"event": event, "t": time.time(), **fields}) + "\n")
    sys.stdout.flush()


def parse_curl_json(text: str) -> dict[str, Any]:
    """Return ok, bytes, the first-byte and total seconds and any error from curl's ``-w '%{json}'`` output."""
    data = json.loads(text.strip().splitlines()[-1])
    code = int(data.get("http_code") or data.get("response_code") or 0)
    error = data.get("errormsg") or ("" if code == 200 else f"HTTP {code}")
    return {
        "ok": code == 200 and not data.get("errormsg"),
        "bytes": int(data.get("size_download", 0)),
        "first_byte_seconds": float(data.get("time_starttransfer", 0.0)),
        "total_seconds": float(data.get("time_total", 0.0)),
        "error": error or "",
    }


def run_curl(spec: dict[str, Any], wait_go: Callable[[], None]) -> int:
    argv = ["curl", "-sS", "--fail", "-o", spec["output"], "-w", "%{json}", spec["url"]]
    if spec.get("rate"):
        argv[1:1] = ["--limit-rate", str(int(spec["rate"]))]
    emit("ready")
    wait_go()
    start = time.time()
    emit("start")
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=spec.get("timeout", 3600))
    try:
        result = parse_curl_json(proc.stdout)
    except (ValueError, IndexError):
        result = {"ok": False, "bytes": 0, "first_byte_seconds": None, "error": proc.stderr.strip()}
    if result.get("first_byte_seconds"):
        emit("first_byte", t=start + result["first_byte_seconds"])
    ok = proc.returncode == 0 and result["ok"]
    error = result["error"] or proc.stderr.strip()
    emit("finish", ok=ok, bytes=result["bytes"], by_source={"origin": result["bytes"]}, error="" if ok else error)
    return 0 if ok else 1


class Aria2:
    """A JSON-RPC client for one aria2c process."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/jsonrpc"

    def call(self, method: str, *params: Any) -> Any:
        body = json.dumps({"jsonrpc": "2.0", "id": "bench", "method": method, "params": list(params)}).encode()
        request = urllib.request.Request(self.url, body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read())["result"]

    def status(self) -> dict[str, Any] | None:
        """Return the torrent's status (active, waiting or stopped), or None before aria2 has it."""
        keys = ["gid", "status", "completedLength", "totalLength", "uploadLength", "seeder", "errorMessage"]
        for method, args in (("aria2.tellActive", ()), ("aria2.tellWaiting", (0, 10)), ("aria2.tellStopped", (0, 10))):
            items = self.call(method, *args, keys)
            if items:
                return dict(items[0])
        return None


def parse_aria2_progress(status: dict[str, Any] | None) -> tuple[int, int, bool, str]:
    """Return (completed bytes, total bytes, done, error) from an aria2 tellStatus result."""
    if not status:
        return 0, 0, False, ""
    completed = int(status.get("completedLength", 0))
    total = int(status.get("totalLength", 0))
    error = status.get("errorMessage", "") if status.get("status") == "error" else ""
    return completed, total, total > 0 and completed == total, error


def aria2_argv(spec: dict[str, Any]) -> list[str]:
    """Return aria2c's command line for a seeder or a leecher (baselines.md lists why each option is set)."""
    argv = [
        "aria2c",
        "--enable-rpc",
        f"--rpc-listen-port={spec['rpc_port']}",
        f"--listen-port={spec['listen_port']}",
        f"--dir={spec['dir']}",
        "--enable-dht=false",
        "--enable-dht6=false",
        "--bt-enable-lpd=false",
        "--enable-peer-exchange=true",
        "--file-allocation=falloc",
        "--seed-ratio=0.0",
        "--bt-tracker-interval=5",
        "--check-integrity=true",
        "--allow-overwrite=true",
        "--auto-file-renaming=false",
        "--summary-interval=0",
        "--console-log-level=warn",
        "--quiet=true",
        f"--stop-with-process={os.getpid()}",
    ]
    if spec.get("upload_rate"):
        argv.append(f"--max-overall-upload-limit={int(spec['upload_rate'])}")
    if spec.get("download_rate"):
        argv.append(f"--max-overall-download-limit={int(spec['download_rate'])}")
    if not spec.get("seed"):
        # Leechers wait paused so that every peer starts on the same `go`.
        argv.append("--pause=true")
    argv.append(spec["torrent"])
    return argv


def run_aria2(spec: dict[str, Any], wait_go: Callable[[], None], wait_stop: Callable[[], None]) -> int:
    timeout = spec.get("timeout", 3600)
    proc = subprocess.Popen(aria2_argv(spec), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    rpc = Aria2(spec["rpc_port"])
    try:
        deadline = time.monotonic() + 120
        status = None
        while True:
            if proc.poll() is not None:
                emit("finish", ok=False, bytes=0, by_source={}, error=f"aria2c exited with {proc.returncode}")
                return 1
            try:
                status = rpc.status()
            except OSError:
                status = None
            _, _, done, _ = parse_aria2_progress(status)
            if status and (done or not spec.get("seed")):
                break
            if time.monotonic() > deadline:
                emit("finish", ok=False, bytes=0, by_source={}, error="aria2c did not become ready in 120 s")
                return 1
            time.sleep(0.1)
        emit("ready")
        if spec.get("seed"):
            wait_stop()
            emit("stats", upload_bytes=int((rpc.status() or {}).get("uploadLength", 0)))
            return 0
        wait_go()
        emit("start")
        rpc.call("aria2.unpauseAll")
        first = False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            completed, _, done, error = parse_aria2_progress(rpc.status())
            if completed and not first:
                first = True
                emit("first_byte")
            if done or error:
                emit("finish", ok=done, bytes=completed, by_source={}, error=error)
                break
            time.sleep(_POLL)
        else:
            emit("finish", ok=False, bytes=0, by_source={}, error=f"not complete after {timeout} s")
            return 1
        # A finished peer keeps seeding for the others, as BitTorrent peers do, until the runner stops it.
        wait_stop()
        return 0 if done else 1
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


_SOURCE_FIELD = re.compile(r"\b(origin|seed|peers|local)=([0-9]+)")


def parse_dfget_output(text: str) -> dict[str, int]:
    """Return bytes by source from dfget's summary line ("... from origin=N seed=N peers=N local=N")."""
    for line in reversed(text.strip().splitlines()):
        if "dfget: saved" in line:
            return {name: int(value) for name, value in _SOURCE_FIELD.findall(line.rsplit(";", 1)[-1])}
    return {}


def run_dfget(spec: dict[str, Any], wait_go: Callable[[], None]) -> int:
    argv = [*spec["dfget"], spec["url"], "-O", spec["output"], "-e", spec["endpoint"], "--no-progress"]
    emit("ready")
    wait_go()
    emit("start")
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=spec.get("timeout", 3600))
    ok = proc.returncode == 0
    by_source = parse_dfget_output(proc.stdout + proc.stderr) if ok else {}
    size = os.path.getsize(spec["output"]) if ok and os.path.exists(spec["output"]) else 0
    error = "" if ok else (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
    emit("finish", ok=ok, bytes=size, by_source=by_source, error=error)
    return 0 if ok else 1


def _fetch_by_api(spec: dict[str, Any]) -> Callable[[str, str], dict[str, int]]:
    """Return fetch(url, output) through the daemon's local gRPC API, on one channel kept for every file."""
    import grpc
    from dragonfly_api import common_pb2, dfdaemon_pb2, dfdaemon_pb2_grpc

    from dragonfly.cli.dfget.progress import Traffic

    stub = dfdaemon_pb2_grpc.DfdaemonDownloadStub(grpc.insecure_channel(f"unix:{spec['endpoint']}"))

    def fetch(url: str, output: str) -> dict[str, int]:
        request = dfdaemon_pb2.DownloadTaskRequest(download=common_pb2.Download(url=url, output_path=output))
        traffic = Traffic()  # dfget's own count, so both clients report the same sources
        for response in stub.DownloadTask(request, timeout=spec.get("timeout", 3600)):
            if response.HasField("download_piece_finished_response"):
                traffic.add(response.download_piece_finished_response.piece)
        return {"origin": traffic.origin, "seed": traffic.seed, "peers": traffic.peers, "local": traffic.local}

    return fetch


def _fetch_by_dfget(spec: dict[str, Any]) -> Callable[[str, str], dict[str, int]]:
    """Return fetch(url, output): one dfget process per file, as a user's script would run it."""

    def fetch(url: str, output: str) -> dict[str, int]:
        argv = [*spec["dfget"], url, "-O", output, "-e", spec["endpoint"], "--no-progress"]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=spec.get("timeout", 3600))
        if proc.returncode != 0:
            raise RuntimeError(f"dfget {url} exited with {proc.returncode}: {proc.stderr.strip()[-300:]}")
        return parse_dfget_output(proc.stdout + proc.stderr)

    return fetch


def run_files(spec: dict[str, Any], wait_go: Callable[[], None]) -> int:
    """Fetch every file of ``names`` under ``base`` into ``dir``, one after the other, with ``client``.

    curl gets all files in one process (one connection, kept alive: the cheapest direct client); dfget runs once
    per file; api asks the daemon over its local gRPC socket.
    """
    names, base, directory = spec["names"], spec["base"], spec["dir"]
    pairs = [(base + name, os.path.join(directory, name)) for name in names]
    client = spec["client"]
    fetch = {"api": _fetch_by_api, "dfget": _fetch_by_dfget}[client](spec) if client != "curl" else None
    emit("ready")
    wait_go()
    emit("start")
    by_source: dict[str, int] = {}
    error = ""
    try:
        if fetch is None:
            argv = ["curl", "-sS", "--fail"]
            for url, output in pairs:
                argv += ["-o", output, url]
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=spec.get("timeout", 3600))
            if proc.returncode != 0:
                raise RuntimeError(f"curl exited with {proc.returncode}: {proc.stderr.strip()[-300:]}")
        else:
            for url, output in pairs:
                for name, count in fetch(url, output).items():
                    by_source[name] = by_source.get(name, 0) + count
    except Exception as exc:  # reported in the finish event; the runner fails the system
        error = f"{type(exc).__name__}: {exc}"
    size = sum(os.path.getsize(output) for _, output in pairs if os.path.exists(output))
    emit("finish", ok=not error, bytes=size, by_source=by_source, error=error)
    return 0 if not error else 1


def main(argv: list[str] | None = None) -> int:
    """Run the client described by the JSON spec in argv[0]."""
    spec = json.loads((argv if argv is not None else sys.argv[1:])[0])
    commands: dict[str, threading.Event] = {"go": threading.Event(), "stop": threading.Event()}

    def read_commands() -> None:
        for line in sys.stdin:
            if line.strip() in commands:
                commands[line.strip()].set()
        commands["go"].set()
        commands["stop"].set()

    threading.Thread(target=read_commands, daemon=True).start()
    limit = spec.get("timeout", 3600)

    def wait_go() -> None:
        commands["go"].wait(limit)

    def wait_stop() -> None:
        commands["stop"].wait(limit)

    kind = spec["kind"]
    if kind == "curl":
        return run_curl(spec, wait_go)
    if kind == "aria2":
        return run_aria2(spec, wait_go, wait_stop)
    if kind == "dfget":
        return run_dfget(spec, wait_go)
    if kind == "files":
        return run_files(spec, wait_go)
    raise SystemExit(f"unknown agent kind {kind!r}")


if __name__ == "__main__":
    sys.exit(main())
