"""`python -m bench origin`: CPU per GiB of a seed peer's origin path, against curl fetching the same file.

In a swarm the seed peer alone reads the origin, and per byte that is the dearest part of it (bench/RESULTS.md §2
"CPU per GiB in the swarm, profile"). This measures that path without the rest of the swarm: nginx on 127.0.0.1
serves a file of ``--size`` from tmpfs, and each system fetches all of it into a content file on tmpfs:

- ``ours``: what a seed peer does per piece: ``HTTPBackend.download_piece`` of each piece (the daemon's piece
  length and ``download.concurrentPieceCount`` pieces at a time, its 4 MiB pooled buffers), with the piece's
  BLAKE3 fed as its bytes are written (the digest the seed reports to the scheduler);
- ``ours-through-aiohttp``: the same with the body read through aiohttp's reader (what an https or chunked origin
  gets, and what every origin got before ``dragonfly.daemon.backends.body_socket``);
- ``ours-whole-piece-writes``: ``ours`` with each piece written, CRC'd and hashed only once its buffer (the whole
  piece) is in, as before ``body_socket`` wrote what had arrived while waiting for more (``IDLE_WRITE_MIN``);
- ``ours-read-back``: ``ours`` with the BLAKE3 taken by reading each piece back afterwards (what a backend that
  does not feed the digest costs, and what the seed did before);
- ``curl``: ``curl -o`` of the whole file (the baseline: one stream, no hashing).

For each of ours, **ready after the last byte**: per piece, from the moment the last of its bytes are handed to
the write (right after they were received) to the piece being written, CRC'd and hashed (the seed then records and
reports it): what a piece waits beyond its link time. ``--rate`` caps the origin (the Python origin of
``bench swarm --loopback``, paced per 256 KiB) so that pieces arrive over time as on a shaped link, and fetches
them one at a time, as a seed on a slow origin does (``SourceWindow``).

Ours runs on the daemon's event loop (uvloop when installed). The CPU is user + system seconds: ours' of this
process (its event loop and executor threads: only the backend runs in it meanwhile), curl's from ``wait4``;
nginx's is counted for nobody. The systems alternate ``--repeat`` times and the median is reported with the ratio
to curl's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from bench import release_builds_missing
from bench.swarm.origin import nginx_config
from bench.swarm.units import format_rate, parse_rate, parse_size

T = TypeVar("T")
SYSTEMS = (
    "ours",
    "ours-whole-piece-writes",
    "ours-through-aiohttp",
    "ours-read-back",
    "curl",
)
_GIB = 1 << 30
_REPO = Path(__file__).resolve().parent.parent


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the origin exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"the origin did not listen on 127.0.0.1:{port} within {timeout} s")


async def fetch_ours(
    url: str, content: Path, size: int, system: str, *, one_at_a_time: bool = False
) -> tuple[float, list[float]]:
    """Fetch ``url`` piece by piece as a seed peer does, as ``system`` (one of ours); return the CPU seconds this
    process spent and each piece's seconds from its last write's start to its end (ready after the last byte)."""
    from dragonfly.common.netguard import AddressPolicy, parse_networks
    from dragonfly.common.piece import calculate_piece_length, piece_count, piece_range
    from dragonfly.daemon.backends import body_socket, http, piece_chunks
    from dragonfly.daemon.backends.http import HTTPBackend
    from dragonfly.daemon.backends.piece_chunks import PieceDigest
    from dragonfly.daemon.config import DownloadConfig
    from dragonfly.daemon.download.buffers import BufferPool
    from dragonfly.daemon.download.piece_verifier import PIECE_HASH, piece_hash
    from dragonfly.daemon.download.source_downloader import _SOURCE_BUFFER

    read_back = system == "ours-read-back"
    # When each write of the run began, by the file offset it ends at: a piece's last write ends at its end.
    write_began: dict[int, float] = {}
    real_write = piece_chunks.write_chunk

    def timed_write(
        fd: int, offset: int, view: memoryview, crc: int, starts_piece: bool, digest: PieceDigest | None = None
    ) -> int:
        write_began[offset + len(view)] = time.monotonic()
        return real_write(fd, offset, view, crc, starts_piece, digest)

    concurrency = 1 if one_at_a_time else DownloadConfig().concurrent_piece_count
    piece_length = calculate_piece_length(size)
    buffers = BufferPool(_SOURCE_BUFFER, 2 * concurrency)
    slots = asyncio.Semaphore(concurrency)
    with ThreadPoolExecutor(concurrency * 2) as executor:
        backend = HTTPBackend(
            request_header={}, max_retries=0, piece_timeout=60, executor=executor,
            address_policy=AddressPolicy(parse_networks(["127.0.0.0/8"])),
        )  # fmt: skip
        await backend.start()
        fd = os.open(content, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        loop = asyncio.get_running_loop()

        tails: list[float] = []

        async def piece(number: int) -> None:
            offset, length = piece_range(number, size, piece_length)
            digest = None if read_back else PieceDigest(PIECE_HASH)
            async with slots, buffers.get() as buffer:
                await backend.download_piece(url, {}, fd=fd, offset=offset, length=length, buffer=buffer, digest=digest)
            if digest is None:
                await loop.run_in_executor(executor, piece_hash, fd, offset, length)
            elif digest.result(length) is None:
                raise RuntimeError(f"piece {number}: the backend did not feed its digest")
            tails.append(time.monotonic() - write_began[offset + length])

        # The backend falls back to aiohttp's reader when the body cannot be taken over.
        take_over, idle_write_min = http.take_over, body_socket.IDLE_WRITE_MIN
        if system == "ours-through-aiohttp":
            http.take_over = lambda resp, length: None  # type: ignore[assignment]
        if system == "ours-whole-piece-writes":
            # More than the buffer holds: a piece is written once it is all in.
            body_socket.IDLE_WRITE_MIN = _SOURCE_BUFFER + 1
        body_socket.write_chunk = http.write_chunk = timed_write  # type: ignore[assignment]
        try:
            started = _self_cpu()
            await asyncio.gather(*(piece(n) for n in range(piece_count(size, piece_length))))
            return _self_cpu() - started, tails
        finally:
            http.take_over = take_over
            body_socket.IDLE_WRITE_MIN = idle_write_min
            body_socket.write_chunk = http.write_chunk = real_write
            os.close(fd)
            await backend.close()


def _run_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` on the event loop the daemon runs (uvloop when installed, as ``dragonfly.common.process``)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def fetch_curl(url: str, content: Path) -> float:
    """Fetch ``url`` with curl; return its CPU seconds."""
    proc = subprocess.Popen(["curl", "-sSf", "-o", str(content), url])
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"curl exited with {proc.returncode}")
    return usage.ru_utime + usage.ru_stime


def _start_origin(workdir: Path, root: Path, port: int, rate: float) -> subprocess.Popen[bytes]:
    """Serve ``root`` on 127.0.0.1:``port``: nginx, or the Python origin capped at ``rate`` bytes/s when given."""
    if rate:
        argv = [
            sys.executable,
            "-m",
            "bench.swarm.origin",
            "--dir",
            str(root),
            "--port",
            str(port),
            "--rate",
            str(rate),
        ]
        return subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    (workdir / "nginx.conf").write_text(nginx_config(root, f"127.0.0.1:{port}", workdir))
    return subprocess.Popen(["nginx", "-c", str(workdir / "nginx.conf"), "-p", str(workdir)])


def run(workdir: Path, size: int, repeat: int, rate: float = 0.0) -> dict[str, Any]:
    """Serve a file of ``size`` and fetch it ``repeat`` times with each system, alternating."""
    root = workdir / "root"
    root.mkdir(parents=True)
    (workdir / "tmp").mkdir()
    with (root / "blob").open("wb") as blob:
        for _ in range(0, size, 1 << 24):
            blob.write(os.urandom(min(1 << 24, size - blob.tell())))
    port = _free_port()
    origin = _start_origin(workdir, root, port, rate)
    url = f"http://127.0.0.1:{port}/blob"
    cpu: dict[str, list[float]] = {system: [] for system in SYSTEMS}
    tails: dict[str, list[float]] = {system: [] for system in SYSTEMS if system != "curl"}
    try:
        _wait_listening(port, origin)
        for _ in range(repeat):
            for system in SYSTEMS:
                content = workdir / "content"
                if system == "curl":
                    seconds = fetch_curl(url, content)
                else:
                    seconds, piece_tails = _run_loop(fetch_ours(url, content, size, system, one_at_a_time=bool(rate)))
                    tails[system] += piece_tails
                if content.stat().st_size != size:
                    raise RuntimeError(f"{system} stored {content.stat().st_size} of {size} bytes")
                content.unlink()
                cpu[system].append(seconds)
    finally:
        origin.terminate()
        origin.wait(timeout=10)
    per_gib = {system: statistics.median(values) * _GIB / size for system, values in cpu.items()}
    return {
        "size": size,
        "repeat": repeat,
        "rate": rate,
        "load": os.getloadavg()[0],
        "cpu_seconds": cpu,
        "cpu_per_gib": per_gib,
        "ratio_to_curl": {system: per_gib[system] / per_gib["curl"] for system in SYSTEMS},
        "ready_after_last_byte_ms": {system: _percentiles(values) for system, values in tails.items()},
    }


def _percentiles(seconds: list[float]) -> dict[str, float]:
    """Return the median and the 90th percentile of ``seconds``, in milliseconds."""
    ordered = sorted(seconds)
    return {"p50": statistics.median(ordered) * 1e3, "p90": ordered[int(0.9 * (len(ordered) - 1))] * 1e3}


def format_report(report: dict[str, Any]) -> str:
    origin = (
        f"the Python origin capped at {format_rate(report['rate'])}, one piece at a time"
        if report.get("rate")
        else "nginx"
    )
    lines = [
        f"Origin path, {report['size'] / (1 << 20):.0f} MiB from {origin} on 127.0.0.1 into tmpfs, median of "
        f"{report['repeat']} (load {report['load']:.1f})",
        "| system | CPU s / GiB | × curl | ready after the last byte p50 / p90 ms |",
        "|---|---|---|---|",
    ]
    ready = report.get("ready_after_last_byte_ms", {})
    for system in SYSTEMS:
        tail = ready.get(system)
        after = f"{tail['p50']:.1f} / {tail['p90']:.1f}" if tail else "—"
        lines.append(
            f"| {system} | {report['cpu_per_gib'][system]:.2f} | {report['ratio_to_curl'][system]:.2f} | {after} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench origin", description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="256MiB", help="file size, e.g. 1GiB")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--rate", default="0", help="cap the origin (e.g. 400Mbit) and fetch one piece at a time; 0: nginx, uncapped"
    )
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--max-curl-ratio", type=float, default=None, metavar="R",
        help="exit 1 when ours uses more than R × curl's CPU per GiB",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if release_builds_missing("bench origin"):
        return 2
    for tool in ("nginx", "curl"):
        if shutil.which(tool) is None:
            print(f"bench origin: {tool} is not installed (scripts/system-deps.sh)", file=sys.stderr)
            return 2
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    size = parse_size(args.size)
    try:
        rate = parse_rate(args.rate)
    except ValueError as exc:
        parser.error(str(exc))
    workdir = Path(tempfile.mkdtemp(prefix="dfbench-origin-", dir="/dev/shm"))
    try:
        report = run(workdir, size, args.repeat, rate)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(report) if args.json else format_report(report))
    ratio = report["ratio_to_curl"]["ours"]
    if args.max_curl_ratio is not None and ratio > args.max_curl_ratio:
        print(f"bench origin: ours uses {ratio:.2f} × curl's CPU per GiB, above --max-curl-ratio "
              f"{args.max_curl_ratio:g}", file=sys.stderr)  # fmt: skip
        return 1
    return 0
