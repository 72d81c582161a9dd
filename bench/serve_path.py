"""`python -m bench serve`: CPU per GiB of a parent's serving path alone, TLS against plaintext, in one run.

In a swarm every byte delivered is served once by some parent, and on 2 cores that CPU is part of the makespan
(bench/RESULTS.md §2 "The serving side"). This measures the serving step without the rest of the daemon: a server
process serves a file of ``--size`` from tmpfs, one 4 MiB piece per request, to a native receiver in another process
over loopback, with the daemon's own code for each step:

- ``tls``: the parent's default (``storage.server.nativeTls``): a rustls ``TlsServerStream`` after a mutual-TLS
  handshake with certificates of one CA, each piece sent as ``VortexServer`` sends it (``vortex_tls.sender`` driven
  by ``vortex_server._send_patiently``: pread, encrypt and ``sendmsg`` natively, waiting for a full socket on the
  thread); the receiver is the child's rustls ``TlsClientStream.recv_to_file``;
- ``plaintext``: ``sendfile`` per piece (``vortex_server._sendfile_some``, polling a full socket); the receiver is
  ``recv_to_file``;
- ``vortex-tls`` and ``vortex-plaintext``: the daemon's whole serving side instead of its send step alone: a
  ``VortexServer`` on uvloop with the daemon's 32 upload threads, serving a finished task of a ``Storage`` whose content
  file is a hard link to the file, to the child's own ``fetch_piece`` (with its connection pool: one kept-alive
  connection) reading Vortex frames. Against ``tls`` / ``plaintext`` this is what the server adds per piece (request
  reads, look-ups, executor hand-offs, event-loop wake-ups); the server's CPU is its whole process's from the
  receiver's first measured request to its last, the first piece (handshake, set-up) fetched before.

The receiver asks for the next piece once it holds the last, as a child with one piece in flight per connection
does. The CPU is user + system seconds of each process over the pieces only (handshake and set-up excluded); on
loopback the server's figure includes the kernel's delivery into the receiver's socket. The systems alternate
``--repeat`` times; medians and the ratio to plaintext are reported.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import resource
import select
import shutil
import socket
import statistics
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any

from bench import release_builds_missing
from bench.swarm.units import parse_size

SYSTEMS = ("tls", "plaintext", "vortex-tls", "vortex-plaintext")
PIECE = 4 << 20
# The vortex-* systems' task (any 64 hex characters) and the daemon's upload threads (dragonfly.daemon.server).
_TASK = "5e" * 32
_UPLOAD_THREADS = 32
_GIB = 1 << 30
_TIMEOUT = 30.0
# A request: the offset of the piece (8 bytes, big-endian); all ones ends the connection.
_END = (1 << 64) - 1


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _tls_files(directory: Path) -> dict[str, Any]:
    from dragonfly.common import pki

    ca = pki.create_ca("bench serve")
    ca_cert, _ = ca.write(directory)
    files: dict[str, Any] = {"ca": str(ca_cert)}
    for name in ("server", "client"):
        cert, key = pki.issue(ca, name, ips=["127.0.0.1"], roles=["peer"]).write(directory, name)
        files[name] = (str(cert), str(key))
    return files


def _wait(sock: socket.socket, what: str) -> None:
    poller = select.poll()
    poller.register(sock, select.POLLIN if what == "read" else select.POLLOUT)
    if not poller.poll(_TIMEOUT * 1000):
        raise TimeoutError(f"no progress in {_TIMEOUT:g} s (waiting to {what})")


def _serve(system: str, sock: socket.socket, content: int, size: int, files: dict[str, Any]) -> float:
    """Serve pieces of ``content`` until the end request; return this process's CPU seconds over the pieces."""
    from dragonfly.common import native
    from dragonfly.daemon import vortex_tls
    from dragonfly.daemon.upload.vortex_server import _send_patiently, _sendfile_some

    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setblocking(False)
    conn: socket.socket | vortex_tls.NativeTlsSocket = sock
    if system == "tls":
        config = native.TlsServerConfig(files["ca"], *files["server"])
        stream = native.TlsServerStream(config, sock.fileno())
        while (want := stream.handshake()) is not None:
            _wait(sock, want)
        conn = vortex_tls.NativeTlsSocket(sock, stream)
    used = 0.0
    while True:
        request = b""
        while len(request) < 8:
            if isinstance(conn, vortex_tls.NativeTlsSocket):
                chunk = conn.stream.recv(8 - len(request))
                if isinstance(chunk, str):
                    _wait(sock, chunk)
                    continue
            else:
                _wait(sock, "read")
                chunk = sock.recv(8 - len(request))
            if not chunk:
                return used
            request += chunk
        offset = int.from_bytes(request, "big")
        if offset == _END:
            return used
        if offset % PIECE or offset >= size:
            raise ValueError(f"bad request: offset {offset}")
        length = min(PIECE, size - offset)
        started = _self_cpu()
        if isinstance(conn, vortex_tls.NativeTlsSocket):
            sender = vortex_tls.sender(conn, b"", content, offset, length)
            while (blocked := _send_patiently(sender)) is not None:
                _wait(sock, blocked)
        else:
            end = offset + length
            while offset < end:
                sent = _sendfile_some(sock, content, offset, end - offset)
                if sent:
                    offset += sent
                else:
                    _wait(sock, "write")
        used += _self_cpu() - started


def _receive(system: str, sock: socket.socket, output: int, size: int, files: dict[str, Any]) -> float:
    """Fetch every piece in turn into ``output``; return this process's CPU seconds over the pieces."""
    from dragonfly.common import native

    buffer = bytearray(PIECE)
    if system == "tls":
        config = native.TlsClientConfig(files["ca"], *files["client"])
        stream = native.TlsClientStream(config, sock.fileno(), "127.0.0.1", _TIMEOUT)
    started = _self_cpu()
    for offset in range(0, size, PIECE):
        length = min(PIECE, size - offset)
        if system == "tls":
            stream.send_all(offset.to_bytes(8, "big"), _TIMEOUT)
            stream.recv_to_file(output, offset, length, buffer, _TIMEOUT)
        else:
            sock.sendall(offset.to_bytes(8, "big"))
            native.recv_to_file(sock.fileno(), output, offset, length, buffer, _TIMEOUT)
    used = _self_cpu() - started
    end = _END.to_bytes(8, "big")
    if system == "tls":
        stream.send_all(end, _TIMEOUT)
    else:
        sock.sendall(end)
    return used


def _tls_files_of(files: dict[str, Any], side: str) -> Any:
    from dragonfly.common.tls import TLSFiles

    cert, key = files[side]
    return TLSFiles(ca_cert=files["ca"], cert=cert, key=key)


def _serve_vortex(tls: bool, workdir: Path, crcs: list[int], size: int, files: dict[str, Any], control: int) -> float:
    """Run a ``VortexServer`` over a stored copy of the file, writing its port to ``control``; return this process's
    CPU seconds between the receiver's b"s" (start) and b"e" (end, or EOF) on ``control``."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    import uvloop

    from dragonfly.common import native
    from dragonfly.common.digest import format_piece_digest
    from dragonfly.daemon import vortex_tls
    from dragonfly.daemon.storage import PieceRecord, Storage
    from dragonfly.daemon.upload.vortex_server import VortexServer

    storage = Storage(str(workdir / "storage"), keep=True)
    storage.open()
    path = storage.content_path(_TASK)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    os.link(workdir / "content", f"{path}.bench")  # the task's content file is the file itself: no copy
    storage.prepare_task(
        _TASK,
        url="http://bench/serve",
        piece_length=PIECE,
        content_length=size,
        response_header={},
        content=f"{path}.bench",
    )
    for number, crc in enumerate(crcs):
        offset = number * PIECE
        record = PieceRecord(number, offset, min(PIECE, size - offset), format_piece_digest(crc), None, 0, 0.0, 0.0)
        storage.finish_piece(_TASK, record)
    storage.finish_task(_TASK)

    async def serve(executor: ThreadPoolExecutor) -> float:
        server = VortexServer(
            storage,
            ip="127.0.0.1",
            port=0,
            upload_bucket=native.TokenBucket(0),
            executor=executor,
            timeout=_TIMEOUT,
            native_tls=vortex_tls.native_server(_tls_files_of(files, "server")) if tls else None,
        )
        await server.start()
        loop = asyncio.get_running_loop()
        os.write(control, server.port.to_bytes(2, "big"))
        started = used = 0.0
        try:
            while True:
                readable = loop.create_future()
                loop.add_reader(control, readable.set_result, None)
                try:
                    await readable
                finally:
                    loop.remove_reader(control)
                command = os.read(control, 1)
                if command == b"s":
                    started = _self_cpu()
                else:
                    used = _self_cpu() - started
                    return used
        finally:
            await server.stop(1.0)

    try:
        with ThreadPoolExecutor(_UPLOAD_THREADS) as executor:
            return uvloop.run(serve(executor))
    finally:
        storage.close()


def _receive_vortex(tls: bool, port: int, output: int, size: int, files: dict[str, Any], control: int) -> float:
    """Fetch the first piece (set-up), then every piece with the child's ``fetch_piece``, telling the server when
    the measured part starts and ends; return this process's CPU seconds over it."""
    from dragonfly.daemon import vortex_tls
    from dragonfly.daemon.download.vortex_client import ConnectionPool, fetch_piece

    pool = ConnectionPool(native_tls=vortex_tls.native_client(_tls_files_of(files, "client")) if tls else None)
    buffer = bytearray(PIECE)

    def fetch(number: int) -> None:
        offset = number * PIECE
        length = min(PIECE, size - offset)
        fetch_piece(
            ("127.0.0.1", port), _TASK, number, fd=output, offset=offset, length=length, buffer=buffer,
            connect_timeout=_TIMEOUT, timeout=_TIMEOUT, pool=pool,
        )  # fmt: skip

    try:
        fetch(0)
        os.write(control, b"s")
        started = _self_cpu()
        for number in range(-(-size // PIECE)):
            fetch(number)
        used = _self_cpu() - started
        os.write(control, b"e")
        return used
    finally:
        pool.close()


def _run_vortex_once(
    system: str, workdir: Path, size: int, files: dict[str, Any], crcs: list[int]
) -> tuple[float, float]:
    """One transfer through a ``VortexServer`` in a child process: (server, receiver) CPU seconds."""
    tls = system == "vortex-tls"
    to_server, from_receiver = socket.socketpair()
    report_read, report_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the server
        status = 1
        try:
            to_server.close()
            os.close(report_read)
            used = _serve_vortex(tls, workdir, crcs, size, files, from_receiver.fileno())
            os.write(report_write, repr(used).encode())
            status = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(status)
    from_receiver.close()
    os.close(report_write)
    output_path = workdir / "output"
    try:
        with to_server, os.fdopen(report_read, "rb") as report:
            to_server.settimeout(_TIMEOUT)
            port = int.from_bytes(_recv_all(to_server, 2), "big")
            output = os.open(output_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                receiver = _receive_vortex(tls, port, output, size, files, to_server.fileno())
            finally:
                os.close(output)
            to_server.shutdown(socket.SHUT_WR)
            served = report.read()
    finally:
        _, status = os.waitpid(pid, 0)
    if status != 0 or not served:
        raise RuntimeError(f"bench serve: the {system} server failed (wait status {status})")
    return float(served), receiver


def _recv_all(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise RuntimeError("bench serve: the server process ended before it listened")
        data += chunk
    return data


def run_once(
    system: str, workdir: Path, size: int, files: dict[str, Any], *, verify: bool, crcs: list[int] | None = None
) -> dict[str, float]:
    """One transfer of the whole file: the server's and the receiver's CPU seconds per GiB (``verify``: and
    check that the receiver's copy is the file). The vortex-* systems need the pieces' CRC-32s (``crcs``)."""
    if system.startswith("vortex-"):
        output_path = workdir / "output"
        try:
            served_cpu, receiver_cpu = _run_vortex_once(system, workdir, size, files, crcs or [])
            if verify and not filecmp.cmp(workdir / "content", output_path, shallow=False):
                raise RuntimeError(f"bench serve: the {system} receiver's copy differs from the file")
        finally:
            output_path.unlink(missing_ok=True)
            shutil.rmtree(workdir / "storage", ignore_errors=True)
        return {"server": served_cpu / (size / _GIB), "receiver": receiver_cpu / (size / _GIB)}
    source = workdir / "content"
    listener = socket.create_server(("127.0.0.1", 0))
    report_read, report_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the server
        status = 1
        try:
            os.close(report_read)
            # Bounded: a receiver that never connects would otherwise leave this process, and the parent's
            # waitpid, blocked for ever.
            listener.settimeout(_TIMEOUT)
            conn, _ = listener.accept()
            listener.close()
            content = os.open(source, os.O_RDONLY)
            used = _serve(system, conn, content, size, files)
            os.write(report_write, repr(used).encode())
            status = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(status)
    os.close(report_write)
    output_path = workdir / "output"
    try:
        # The listener and the report pipe are closed on every way out, a failed connection included.
        with (
            listener,
            os.fdopen(report_read, "rb") as report,
            socket.create_connection(listener.getsockname(), timeout=_TIMEOUT) as sock,
        ):
            listener.close()
            output = os.open(output_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                receiver = _receive(system, sock, output, size, files)
            finally:
                os.close(output)
            served = report.read()
        if verify and not filecmp.cmp(source, output_path, shallow=False):
            raise RuntimeError(f"bench serve: the {system} receiver's copy differs from the file")
    finally:
        _, status = os.waitpid(pid, 0)
        output_path.unlink(missing_ok=True)
    if status != 0 or not served:
        raise RuntimeError(f"bench serve: the {system} server failed (wait status {status})")
    gib = size / _GIB
    return {"server": float(served) / gib, "receiver": receiver / gib}


def run(workdir: Path, size: int, repeat: int) -> dict[str, Any]:
    from dragonfly.common import native

    files = _tls_files(workdir)
    crcs = []
    with open(workdir / "content", "wb") as content:
        for offset in range(0, size, PIECE):
            piece = os.urandom(min(PIECE, size - offset))
            crcs.append(native.crc32(piece))
            content.write(piece)
    rounds: dict[str, list[dict[str, float]]] = {system: [] for system in SYSTEMS}
    for round_ in range(repeat):
        for system in SYSTEMS:
            rounds[system].append(run_once(system, workdir, size, files, verify=round_ == 0, crcs=crcs))
    medians = {
        system: {side: statistics.median(r[side] for r in runs) for side in ("server", "receiver")}
        for system, runs in rounds.items()
    }
    load = os.getloadavg()[0]
    return {
        "size": size,
        "repeat": repeat,
        "load_1min_after": round(load, 2),
        "cpu_s_per_gib": medians,
        "rounds": rounds,
        "server_ratio_to_plaintext": medians["tls"]["server"] / medians["plaintext"]["server"],
    }


def format_report(report: dict[str, Any]) -> str:
    lines = [
        f"serve: one server process → one receiver process, {report['size'] / _GIB:.2f} GiB in 4 MiB pieces over "
        f"loopback (tmpfs), median of {report['repeat']} alternating rounds, load {report['load_1min_after']}",
        "| system | server CPU s / GiB | × plaintext | receiver CPU s / GiB | server rounds |",
        "|---|---|---|---|---|",
    ]
    plain = report["cpu_s_per_gib"]["plaintext"]["server"]
    for system in SYSTEMS:
        cpu = report["cpu_s_per_gib"][system]
        each = ", ".join(f"{r['server']:.3f}" for r in report["rounds"][system])
        lines.append(
            f"| {system} | {cpu['server']:.3f} | {cpu['server'] / plain:.2f} | {cpu['receiver']:.3f} | {each} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench serve", description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="1GiB", help="file size, e.g. 256MiB")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if release_builds_missing("bench serve"):
        return 2
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    size = parse_size(args.size)
    if size < PIECE:
        parser.error(f"--size must be at least one piece ({PIECE} bytes)")
    workdir = Path(tempfile.mkdtemp(prefix="dfbench-serve-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
    try:
        report = run(workdir, size, args.repeat)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(report) if args.json else format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
