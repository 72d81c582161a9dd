"""A test peer that claims a whole task and then misbehaves as a parent, in one of these modes:

- ``corrupt``: serves every piece with one byte flipped (a peer with bad memory, a bad disk or a buggy build);
- ``trickle``: answers a piece request at once, then sends the bytes a kilobyte at a time, slowly enough to be
  useless and fast enough never to trip a read timeout;
- ``mute``: accepts piece requests and never answers them;
- ``silent``: accepts SyncPieces and never reports a piece.

Real dfdaemons do none of this, so a misbehaving sender has to be built on purpose. It speaks only the parts of the
protocol a parent needs, written here from the reference (``docs/reference/protocol.md#vortex``,
``#scheduler-protocol``) rather than with
the daemon's own code, so the wire format is checked independently:

- ``scheduler.v2.AnnounceHost`` as a normal host, then ``AnnouncePeer``: register with ``need_back_to_source``,
  report every piece as fetched from the origin (with the CRC-32 of the TRUE bytes) and finish, so the
  scheduler sees a succeeded peer holding the whole task;
- ``dfdaemon.v2.DfdaemonUpload.SyncPieces`` / ``SyncHost`` on a gRPC port;
- a Vortex TCP server answering DownloadPiece with the piece's true metadata and corrupted bytes.

With ``files`` (a cluster certificate, as every member holds with mutual TLS on) it speaks TLS on every port.

With ``forged``, it is the attacker of docs/security.md instead: it serves the bytes of another file of the same
size with their own (matching) CRC-32, and reports them to the scheduler as fetched from the origin with their
CRC-32 or (``report_blake3``) their BLAKE3 digests, trying to make its digests the trusted ones.

It also runs as a process of its own (the swarm benchmark's fault injection starts it in a host's namespace):

    python tests/e2e/misbehaving_peer.py --mode trickle --scheduler IP:PORT --url URL --content FILE \
        [--ip IP] [--hostname NAME] [--ca-cert F --cert F --key F]

It prints ``misbehaving peer ready`` once the scheduler holds its claim, serves until SIGTERM or SIGINT, then
prints what it was asked as one JSON line. With ``--claim-on-signal`` it starts serving at once (``misbehaving
peer serving``) and claims the task only on SIGUSR1, so a harness can start it early and strike at a chosen moment.
"""

from __future__ import annotations

import contextlib
import os
import queue
import socket
import ssl
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from dragonfly_api import common_pb2, dfdaemon_pb2, dfdaemon_pb2_grpc, scheduler_pb2, scheduler_pb2_grpc
from google.protobuf import duration_pb2, timestamp_pb2

from dragonfly.common import ids, native, tls
from dragonfly.common.piece import calculate_piece_length, piece_count, piece_range

TAG_DOWNLOAD_PIECE, TAG_PIECE_CONTENT, TAG_ERROR = 0, 1, 255
ERROR_NOT_FOUND = 2


def _recv_exactly(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise ConnectionError("peer closed the connection mid-frame")
        data += chunk
    return data


class _Upload(dfdaemon_pb2_grpc.DfdaemonUploadServicer):
    def __init__(self, peer: MisbehavingPeer) -> None:
        self.peer = peer

    def SyncPieces(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        self.peer.sync_pieces_calls += 1
        if request.task_id != self.peer.task_id:
            context.abort(grpc.StatusCode.NOT_FOUND, f"task {request.task_id} not found")
        if self.peer.mode == "silent":
            # Silent until the child gives up or this peer stops (stop() ends every call), at most 10 minutes.
            ended = threading.Event()
            if context.add_callback(ended.set):
                ended.wait(600)
            return
        wanted = set(request.interested_piece_numbers) or set(range(self.peer.piece_count))
        for number in sorted(wanted & set(range(self.peer.piece_count))):
            offset, length = piece_range(number, self.peer.size, self.peer.piece_length)
            yield dfdaemon_pb2.SyncPiecesResponse(
                number=number, offset=offset, length=length, ip=self.peer.ip, tcp_port=self.peer.vortex_port
            )

    def SyncHost(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        deadline = time.monotonic() + 120
        while context.is_active() and time.monotonic() < deadline:
            yield self.peer.host()
            time.sleep(1)


MODES = ("corrupt", "trickle", "mute", "silent")
# Bytes per trickled chunk and the pause between chunks: ~10 KiB/s, a read timeout never fires.
TRICKLE_CHUNK = 1024
TRICKLE_PAUSE = 0.1


class MisbehavingPeer:
    """Announce a finished copy of ``content`` at ``url`` and misbehave as ``mode`` says; count what it is asked."""

    def __init__(
        self,
        scheduler_addr: str,
        url: str,
        content: Path,
        *,
        mode: str = "corrupt",
        hostname: str = "misbehaving-peer",
        files: tls.TLSFiles | None = None,
        forged: Path | None = None,
        report_blake3: bool = False,
        ip: str = "127.0.0.1",
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.scheduler_addr = scheduler_addr
        self.url = url
        self.content = content
        self.forged = forged
        self.report_blake3 = report_blake3
        self.hostname = hostname
        self.size = content.stat().st_size
        self.piece_length = calculate_piece_length(self.size)
        self.piece_count = piece_count(self.size, self.piece_length)
        self.task_id = ids.task_id(url)
        self.ip = ip
        self.host_id = ids.host_id(ip, hostname)
        self.peer_id = ids.peer_id(ip, hostname)
        self.vortex_requests = 0
        self.sync_pieces_calls = 0
        self._listener = socket.create_server((ip, 0))
        self.vortex_port = self._listener.getsockname()[1]
        self._server = grpc.server(futures.ThreadPoolExecutor(8))
        dfdaemon_pb2_grpc.add_DfdaemonUploadServicer_to_server(_Upload(self), self._server)
        self.grpc_port = tls.add_port(self._server, f"{ip}:0", files)
        self._channel = tls.sync_channel(scheduler_addr, files)
        self._ssl: ssl.SSLContext | None = tls.server_ssl_context(files) if files else None
        self._scheduler = scheduler_pb2_grpc.SchedulerStub(self._channel)
        self.stopping = threading.Event()
        self._vortex_thread = threading.Thread(target=self._serve_vortex, name="vortex", daemon=True)

    def host(self) -> common_pb2.Host:
        # Generous figures so the scheduler has every reason to pick this host.
        return common_pb2.Host(
            id=self.host_id,
            type=0,
            hostname=self.hostname,
            ip=self.ip,
            port=self.grpc_port,
            download_port=self.grpc_port,
            os="linux",
            platform="linux",
            platform_family="unix",
            cpu=common_pb2.CPU(logical_count=8, physical_count=8, percent=1.0),
            memory=common_pb2.Memory(total=16 << 30, available=15 << 30, free=15 << 30, used=1 << 30),
            network=common_pb2.Network(max_rx_bandwidth=10**10, max_tx_bandwidth=10**10),
            disk=common_pb2.Disk(total=100 << 30, free=90 << 30, used=10 << 30, used_percent=10.0),
        )

    def start(self) -> None:
        """Serve, announce the host, and report the whole task as fetched from the origin."""
        self.serve()
        self.claim()

    def serve(self) -> None:
        """Start the servers and announce the host (it holds nothing yet)."""
        self._server.start()
        self._vortex_thread.start()
        self._scheduler.AnnounceHost(
            scheduler_pb2.AnnounceHostRequest(host=self.host(), interval=duration_pb2.Duration(seconds=300)),
            timeout=10,
        )

    def claim(self) -> None:
        """Report the whole task as fetched from the origin: from now on the scheduler offers this peer."""
        self._announce_finished_task()

    def _announce_finished_task(self) -> None:
        requests: queue.Queue[Any] = queue.Queue()

        def send(**message: Any) -> None:
            requests.put(
                scheduler_pb2.AnnouncePeerRequest(
                    host_id=self.host_id, task_id=self.task_id, peer_id=self.peer_id, **message
                )
            )

        download = common_pb2.Download(
            url=self.url,
            type=common_pb2.STANDARD,
            priority=common_pb2.LEVEL6,
            filtered_query_params=list(ids.DEFAULT_FILTERED_QUERY_PARAMS),
            need_back_to_source=True,
            actual_content_length=self.size,
            actual_piece_length=self.piece_length,
            actual_piece_count=self.piece_count,
        )
        send(register_peer_request=scheduler_pb2.RegisterPeerRequest(download=download))
        responses = self._scheduler.AnnouncePeer(iter(requests.get, None), timeout=60)
        first = next(responses)
        if not first.HasField("need_back_to_source_response"):
            raise AssertionError(f"scheduler answered {first} to a need_back_to_source registration")
        send(download_peer_back_to_source_started_request=scheduler_pb2.DownloadPeerBackToSourceStartedRequest())
        with open(self.forged or self.content, "rb") as f:
            for number in range(self.piece_count):
                offset, length = piece_range(number, self.size, self.piece_length)
                data = os.pread(f.fileno(), length, offset)
                digest = (
                    f"blake3:{native.Hasher('blake3', data).hexdigest()}"
                    if self.report_blake3
                    else f"crc32:{zlib.crc32(data)}"
                )
                piece = common_pb2.Piece(
                    number=number,
                    offset=offset,
                    length=length,
                    digest=digest,
                    traffic_type=common_pb2.BACK_TO_SOURCE,
                    cost=duration_pb2.Duration(nanos=20_000_000),
                    created_at=timestamp_pb2.Timestamp(seconds=int(time.time())),
                )
                send(
                    download_piece_back_to_source_finished_request=(
                        scheduler_pb2.DownloadPieceBackToSourceFinishedRequest(piece=piece)
                    )
                )
        send(download_peer_back_to_source_finished_request=scheduler_pb2.DownloadPeerBackToSourceFinishedRequest())
        requests.put(None)
        for _ in responses:  # the scheduler closes the stream after the finished message
            pass

    def _serve_vortex(self) -> None:
        self._listener.settimeout(0.2)
        while not self.stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        conn.settimeout(30)
        if self._ssl is not None:
            try:
                conn = self._ssl.wrap_socket(conn, server_side=True)
            except OSError:
                conn.close()
                return
        with conn, contextlib.suppress(OSError):
            frame_id, tag, length = struct.unpack(">BBI", _recv_exactly(conn, 6))
            value = _recv_exactly(conn, length)
            self.vortex_requests += 1
            task_id, number = value[:64].decode(), struct.unpack(">I", value[64:68])[0]
            if tag != TAG_DOWNLOAD_PIECE or task_id != self.task_id or number >= self.piece_count:
                message = f"no piece {number} of task {task_id}".encode()
                conn.sendall(
                    struct.pack(">BBI", frame_id, TAG_ERROR, 1 + len(message)) + bytes([ERROR_NOT_FOUND]) + message
                )
                return
            if self.mode == "mute":
                self.stopping.wait(600)
                return
            offset, size = piece_range(number, self.size, self.piece_length)
            with open(self.forged or self.content, "rb") as f:
                data = bytearray(os.pread(f.fileno(), size, offset))
            digest = f"crc32:{zlib.crc32(data)}".encode()  # the CRC of the true (or forged) bytes ...
            if self.mode == "corrupt" and self.forged is None:
                data[len(data) // 2] ^= 0xFF  # ... and one flipped byte on the wire
            parent = self.peer_id.encode()
            metadata = (
                struct.pack(">IQQI", number, offset, size, len(digest))
                + digest
                + struct.pack(">I", len(parent))
                + parent
                + struct.pack(">BQq", 1, 0, int(time.time()))
            )
            value = struct.pack(">I", len(metadata)) + metadata
            header = struct.pack(">BBI", frame_id, TAG_PIECE_CONTENT, len(value)) + value
            if self.mode != "trickle":
                conn.sendall(header + bytes(data))
                return
            conn.sendall(header)
            for start in range(0, len(data), TRICKLE_CHUNK):
                if self.stopping.wait(TRICKLE_PAUSE):
                    return
                conn.sendall(data[start : start + TRICKLE_CHUNK])

    def stop(self) -> None:
        """Leave the cluster (DeleteHost) and stop serving."""
        with contextlib.suppress(grpc.RpcError):
            self._scheduler.DeleteHost(scheduler_pb2.DeleteHostRequest(host_id=self.host_id), timeout=10)
        self.stopping.set()
        self._listener.close()
        self._server.stop(grace=None).wait(5)
        self._channel.close()
        self._vortex_thread.join(5)


def main(argv: list[str] | None = None) -> int:
    """Run one misbehaving peer as a process until SIGTERM or SIGINT (see the module docstring)."""
    import argparse
    import json
    import signal

    parser = argparse.ArgumentParser(description="a peer that claims a task and misbehaves as a parent")
    parser.add_argument("--mode", choices=MODES, required=True)
    parser.add_argument("--scheduler", required=True, help="scheduler address IP:PORT")
    parser.add_argument("--url", required=True)
    parser.add_argument("--content", required=True, type=Path, help="a file with the task's true bytes")
    parser.add_argument("--ip", default="127.0.0.1")
    parser.add_argument("--hostname", default="misbehaving-peer")
    parser.add_argument("--ca-cert")
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--claim-on-signal", action="store_true", help="claim the task on SIGUSR1, not at once")
    args = parser.parse_args(argv)
    files = tls.TLSFiles(ca_cert=args.ca_cert, cert=args.cert, key=args.key) if args.cert else None
    stop = threading.Event()
    claim = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    signal.signal(signal.SIGUSR1, lambda *_: claim.set())
    peer = MisbehavingPeer(
        args.scheduler, args.url, args.content, mode=args.mode, hostname=args.hostname, files=files, ip=args.ip
    )
    peer.serve()
    if args.claim_on_signal:
        print("misbehaving peer serving", flush=True)
        while not claim.wait(0.05):
            if stop.is_set():
                peer.stop()
                return 0
    peer.claim()
    print("misbehaving peer ready", flush=True)
    stop.wait(4 * 3600)  # a forgotten process still goes away
    peer.stop()
    print(
        json.dumps({"vortex_requests": peer.vortex_requests, "sync_pieces_calls": peer.sync_pieces_calls}), flush=True
    )
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
