"""dfget's gRPC-over-HTTP/2 client (dragonfly.cli.dfget.rpc) against grpcio's server and against hostile peers.

grpcio's server is the reference peer: statuses, messages, binary trailers and flow control over a stream longer
than every window must come through as grpcio's own client would see them. The hostile cases use a fake HTTP/2
server scripted frame by frame; it stands for an *outside* peer's behaviour (a daemon that speaks garbage, hangs,
resets or closes mid-stream), which no real server of ours does on purpose.
"""

from __future__ import annotations

import shutil
import socket
import struct
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

from dragonfly.cli.dfget import hpack, rpc

METHOD = "/dfdaemon.v2.DfdaemonDownload/DownloadTask"


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A directory with a short path, for unix sockets (sun_path holds 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="df-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


# --- against grpcio's server ----------------------------------------------------------------------------------


def _grpc_server(path: str, stream: Callable[[bytes, Any], Iterator[bytes]]) -> grpc.Server:
    handler = grpc.method_handlers_generic_handler(
        "dfdaemon.v2.DfdaemonDownload", {"DownloadTask": grpc.unary_stream_rpc_method_handler(stream)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(2))
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"unix:{path}")
    server.start()
    return server


def test_a_stream_longer_than_every_window_completes(sock_dir: Path) -> None:
    """40 MiB of messages: more than dfget's 16 MiB windows, so it only ends if WINDOW_UPDATEs go out."""
    seen: list[tuple[bytes, dict[str, str]]] = []

    def stream(request: bytes, context: Any) -> Iterator[bytes]:
        seen.append((request, dict(context.invocation_metadata())))
        for index in range(40):
            yield bytes([index]) * (1 << 20)

    path = str(sock_dir / "d.sock")
    server = _grpc_server(path, stream)
    try:
        messages = list(rpc.call(path, METHOD, b"request", timeout=60, metadata=(("x-dragonfly-test", "1"),)))
    finally:
        server.stop(None).wait(5)
    assert [len(m) for m in messages] == [1 << 20] * 40
    assert [m[0] for m in messages] == list(range(40))
    ((request, metadata),) = seen
    assert request == b"request"
    assert metadata["x-dragonfly-test"] == "1"


def test_status_message_and_binary_trailers_come_through(sock_dir: Path) -> None:
    details = b'{"message": "GET failed", "status_code": 404}\x00\xff'

    def stream(request: bytes, context: Any) -> Iterator[bytes]:
        yield b"first"
        context.set_trailing_metadata((("grpc-status-details-bin", details), ("x-other", "plain")))
        context.abort(grpc.StatusCode.NOT_FOUND, "origin: GET http://origin/ä%20b failed (100%)")

    path = str(sock_dir / "d.sock")
    server = _grpc_server(path, stream)
    received: list[bytes] = []
    try:
        with pytest.raises(rpc.RpcError) as caught:
            received.extend(rpc.call(path, METHOD, b"", timeout=60))
    finally:
        server.stop(None).wait(5)
    assert received == [b"first"]
    assert (caught.value.code, caught.value.code_name) == (5, "NOT_FOUND")
    assert caught.value.details == "origin: GET http://origin/ä%20b failed (100%)"
    assert caught.value.trailers == {"grpc-status-details-bin": details}


def test_the_deadline_reaches_the_server_and_ends_the_call(sock_dir: Path) -> None:
    ended = threading.Event()

    def stream(request: bytes, context: Any) -> Iterator[bytes]:
        yield b"started"
        context.add_callback(ended.set)
        ended.wait(30)

    path = str(sock_dir / "d.sock")
    server = _grpc_server(path, stream)
    received: list[bytes] = []
    try:
        with pytest.raises(rpc.RpcError) as caught:
            received.extend(rpc.call(path, METHOD, b"", timeout=0.5))
        # The daemon learns the call ended (grpc-timeout, then the closed connection) and stops its work.
        assert ended.wait(10)
    finally:
        server.stop(None).wait(5)
    assert received == [b"started"]
    assert (caught.value.code, caught.value.details) == (rpc.DEADLINE_EXCEEDED, "Deadline Exceeded")


def test_nothing_listening_is_unavailable(sock_dir: Path) -> None:
    path = sock_dir / "stale.sock"
    with socket.socket(socket.AF_UNIX) as stale:
        stale.bind(str(path))  # bound, never listening
        with pytest.raises(rpc.RpcError) as caught:
            list(rpc.call(str(path), METHOD, b"", timeout=5))
    assert caught.value.code == rpc.UNAVAILABLE
    assert "Connection refused" in caught.value.details


@pytest.mark.parametrize(
    ("seconds", "header"), [(7200, "7200000m"), (0.0015, "2m"), (10**6, "1000000S"), (10**9, "16666667M")]
)
def test_grpc_timeout_header(seconds: float, header: str) -> None:
    assert rpc.grpc_timeout(seconds) == header


# --- against a scripted HTTP/2 peer -----------------------------------------------------------------------------


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">IBI", len(payload) << 8 | kind, flags, stream) + payload


def _message(data: bytes) -> bytes:
    return b"\x00" + len(data).to_bytes(4, "big") + data


OK_HEADERS = hpack.encode(((":status", "200"), ("content-type", "application/grpc")))
SETTINGS = _frame(4, 0, 0)


class Peer:
    """The server side of one connection: reads the client's frames, sends what the test scripts."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        self.buffer = b""
        self.request_headers: list[tuple[str, str]] = []

    def _read(self, size: int) -> bytes:
        while len(self.buffer) < size:
            chunk = self.conn.recv(65536)
            if not chunk:
                raise EOFError
            self.buffer += chunk
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def frame(self) -> tuple[int, int, int, bytes]:
        word, flags, stream = struct.unpack(">IBI", self._read(9))
        return word & 0xFF, flags, stream & 0x7FFFFFFF, self._read(word >> 8)

    def handshake(self) -> None:
        """Read the preface and the request up to its end; answer SETTINGS."""
        assert self._read(24) == b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
        self.conn.sendall(SETTINGS)
        decoder = hpack.Decoder()
        while True:
            kind, flags, _, payload = self.frame()
            if kind == 1:
                self.request_headers = decoder.decode(payload)
            if kind == 0 and flags & 1:
                return

    def send(self, *frames: bytes) -> None:
        self.conn.sendall(b"".join(frames))


def _serve(path: str, script: Callable[[Peer], None]) -> threading.Thread:
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(1)

    def run() -> None:
        with listener:
            listener.settimeout(20)
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(20)
                try:
                    script(Peer(conn))
                except (EOFError, OSError):
                    pass

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _run(
    sock_dir: Path, script: Callable[[Peer], None], timeout: float = 20
) -> tuple[list[bytes], rpc.RpcError | None]:
    path = str(sock_dir / "fake.sock")
    thread = _serve(path, script)
    received: list[bytes] = []
    error: rpc.RpcError | None = None
    try:
        received.extend(rpc.call(path, METHOD, b"req", timeout=timeout, metadata=(("x-dragonfly-copy", "true"),)))
    except rpc.RpcError as exc:
        error = exc
    thread.join(20)
    assert not thread.is_alive()
    return received, error


def test_request_headers_name_localhost_and_the_deadline(sock_dir: Path) -> None:
    peers: list[Peer] = []

    def script(peer: Peer) -> None:
        peer.handshake()
        peers.append(peer)
        trailers = hpack.encode((("grpc-status", "0"),))
        peer.send(_frame(1, 4, 1, OK_HEADERS), _frame(0, 0, 1, _message(b"one")), _frame(1, 5, 1, trailers))

    received, error = _run(sock_dir, script, timeout=30)
    assert (received, error) == ([b"one"], None)
    headers = dict(peers[0].request_headers)
    # Dragonfly's Rust dfdaemon (hyper) refuses the percent-encoded socket path grpcio would put there.
    assert headers[":authority"] == "localhost"
    assert (headers[":method"], headers[":path"], headers["te"]) == ("POST", METHOD, "trailers")
    assert headers["grpc-timeout"] == "30000m"
    assert headers["x-dragonfly-copy"] == "true"


def test_padding_continuation_ping_and_huffman_trailers(sock_dir: Path) -> None:
    pings: list[bytes] = []

    def script(peer: Peer) -> None:
        peer.handshake()
        block = OK_HEADERS
        padded = bytes([3]) + _message(b"padded") + b"\x00" * 3
        # "grpc-status: 0" then grpc-message "%41" Huffman-coded: '%' '4' '1' = 010101 011010 00001, padded with 1s.
        trailers = b"\x00" + bytes([0x0B]) + b"grpc-status" + b"\x010" + b"\x00\x0cgrpc-message" + b"\x83\x55\xa0\xff"
        peer.send(
            _frame(6, 0, 0, b"12345678"),
            _frame(1, 0, 1, block[:3]),
            _frame(9, 4, 1, block[3:]),
            _frame(0, 8, 1, padded),
            _frame(1, 5, 1, trailers),
        )
        kind, flags, _, payload = peer.frame()
        while kind != 6:  # the client's SETTINGS ACK comes first
            kind, flags, _, payload = peer.frame()
        pings.append(payload if flags & 1 else b"")

    received, error = _run(sock_dir, script)
    assert (received, error) == ([b"padded"], None)
    assert pings == [b"12345678"]


def _failed(sock_dir: Path, script: Callable[[Peer], None], timeout: float = 20) -> rpc.RpcError:
    _, error = _run(sock_dir, script, timeout)
    assert error is not None
    return error


def test_garbage_instead_of_http2(sock_dir: Path) -> None:
    def script(peer: Peer) -> None:
        peer._read(24)
        peer.send(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        peer.conn.recv(1)

    error = _failed(sock_dir, script)
    assert error.code == rpc.INTERNAL
    assert error.details.startswith("HTTP/2 protocol error from the daemon:")


def test_a_server_that_never_answers_is_bounded(sock_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rpc, "HANDSHAKE_TIMEOUT", 0.3)
    done = threading.Event()

    def script(peer: Peer) -> None:
        done.wait(20)

    try:
        error = _failed_in_thread(sock_dir, script, done)
    finally:
        done.set()
    assert error.code == rpc.INTERNAL
    assert "no HTTP/2 answer within 0.3s" in error.details


def _failed_in_thread(sock_dir: Path, script: Callable[[Peer], None], done: threading.Event) -> rpc.RpcError:
    path = str(sock_dir / "fake.sock")
    thread = _serve(path, script)
    with pytest.raises(rpc.RpcError) as caught:
        list(rpc.call(path, METHOD, b"", timeout=20))
    done.set()
    thread.join(20)
    return caught.value


def test_connection_closed_mid_stream(sock_dir: Path) -> None:
    def script(peer: Peer) -> None:
        peer.handshake()
        peer.send(_frame(1, 4, 1, OK_HEADERS), _frame(0, 0, 1, _message(b"one")[:4]))

    received, error = _run(sock_dir, script)
    assert received == []
    assert error is not None
    assert error.code == rpc.UNAVAILABLE
    assert error.details in ("Socket closed", "Connection lost (Connection reset by peer)")
    assert error.connection_lost


def test_reset_stream(sock_dir: Path) -> None:
    def script(peer: Peer) -> None:
        peer.handshake()
        peer.send(_frame(1, 4, 1, OK_HEADERS), _frame(3, 0, 1, (2).to_bytes(4, "big")))
        peer.conn.recv(1)

    error = _failed(sock_dir, script)
    assert (error.code, error.details) == (rpc.INTERNAL, "Received RST_STREAM with error code 2")


@pytest.mark.parametrize(
    ("frames", "message"),
    [
        ([_frame(0, 0, 1, _message(b"x"))], "DATA outside the response body"),
        ([_frame(0, 0, 0, b"")], "DATA on stream 0"),
        ([_frame(1, 4, 1, OK_HEADERS), _frame(1, 5, 1, b"\xff\xff\xff\xff\x0f")], "bad header block"),
        ([_frame(1, 4, 1, OK_HEADERS), _frame(0, 1, 1, b"")], "the response ended without trailers"),
        ([_frame(1, 4, 1, OK_HEADERS), _frame(0, 8, 1, b"\x09abc")], "padding longer than the frame"),
        ([struct.pack(">IBI", 1 << 24 | 0, 0, 1)], "frame of 65536 bytes"),
        ([_frame(5, 4, 1, b"\x00\x00\x00\x02")], "PUSH_PROMISE"),
        ([_frame(9, 4, 1, OK_HEADERS)], "CONTINUATION without HEADERS"),
        ([_frame(1, 0, 1, OK_HEADERS[:2]), _frame(0, 0, 1, b"")], "inside an unfinished header block"),
        ([_frame(1, 0, 1, OK_HEADERS[:2]), _frame(1, 4, 1, OK_HEADERS)], "inside an unfinished header block"),
        ([_frame(1, 5, 1, hpack.encode(((":status", "200"), ("grpc-status", "x"))))], "grpc-status 'x'"),
        ([_frame(1, 4, 1, OK_HEADERS), _frame(1, 5, 1, hpack.encode((("grpc-status", "0"),))[:-1])], "bad header"),
    ],
)
def test_broken_framing_is_a_clean_error(sock_dir: Path, frames: list[bytes], message: str) -> None:
    def script(peer: Peer) -> None:
        peer.handshake()
        peer.send(*frames)
        peer.conn.recv(1)

    error = _failed(sock_dir, script)
    assert error.code == rpc.INTERNAL
    assert message in error.details


def test_http_error_status_maps_like_grpc(sock_dir: Path) -> None:
    def script(peer: Peer) -> None:
        peer.handshake()
        peer.send(_frame(1, 5, 1, hpack.encode(((":status", "503"),))))
        peer.conn.recv(1)

    error = _failed(sock_dir, script)
    assert (error.code, error.details) == (rpc.UNAVAILABLE, "Received http2 header with status: 503")


def test_compressed_and_oversized_messages_are_refused(sock_dir: Path) -> None:
    def compressed(peer: Peer) -> None:
        peer.handshake()
        peer.send(_frame(1, 4, 1, OK_HEADERS), _frame(0, 0, 1, b"\x01\x00\x00\x00\x01x"))
        peer.conn.recv(1)

    def oversized(peer: Peer) -> None:
        peer.handshake()
        peer.send(_frame(1, 4, 1, OK_HEADERS), _frame(0, 0, 1, b"\x00" + (rpc.MAX_MESSAGE + 1).to_bytes(4, "big")))
        peer.conn.recv(1)

    assert _failed(sock_dir, compressed).code == rpc.INTERNAL
    (sock_dir / "fake.sock").unlink()
    assert _failed(sock_dir, oversized).code == rpc.RESOURCE_EXHAUSTED


def test_the_client_respects_the_servers_window(sock_dir: Path) -> None:
    """A request larger than the server's 1-byte windows goes out a byte at a time, as WINDOW_UPDATEs allow."""
    sizes: list[int] = []

    def script(peer: Peer) -> None:
        assert peer._read(24) == b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
        peer.send(_frame(4, 0, 0, struct.pack(">HI", 4, 1)))  # SETTINGS_INITIAL_WINDOW_SIZE = 1
        total = 0
        while total < 8:  # 5-byte prefix + b"req"
            kind, _, _, payload = peer.frame()
            if kind == 0:
                sizes.append(len(payload))
                total += len(payload)
                peer.send(_frame(8, 0, 1, (1).to_bytes(4, "big")))
        peer.send(_frame(1, 5, 1, hpack.encode(((":status", "200"), ("grpc-status", "0")))))
        peer.conn.recv(1)

    received, error = _run(sock_dir, script)
    assert (received, error) == ([], None)
    assert sizes == [1] * 8


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        # latin-1 superscript two: str.isdigit() takes it, int() does not.
        (((":status", "\xb2"),), "Received http2 header with status: \xb2"),
        (((":status", "200"), ("grpc-status", "\xb2")), "grpc-status '\xb2'"),
        # Past the interpreter's 4,300-digit limit on int(str).
        (((":status", "200"), ("grpc-status", "0" * 5000)), "is not a status code"),
        (((":status", "2" * 5000),), "Received http2 header with status: 222"),
    ],
)
def test_a_status_that_is_not_ascii_digits_is_a_clean_error(
    sock_dir: Path, headers: tuple[tuple[str, str], ...], message: str
) -> None:
    def script(peer: Peer) -> None:
        peer.handshake()
        peer.send(_frame(1, 5, 1, hpack.encode(headers)))
        peer.conn.recv(1)

    error = _failed(sock_dir, script)
    assert error.code in (rpc.INTERNAL, rpc.UNKNOWN)
    assert message in error.details


def test_a_continuation_flood_is_refused_at_the_header_list_limit(sock_dir: Path) -> None:
    """A header block that never ends (CONTINUATION after CONTINUATION) is refused once it passes the limit."""
    sent: list[int] = []

    def script(peer: Peer) -> None:
        peer.handshake()
        peer.send(_frame(1, 0, 1, OK_HEADERS))
        fragment = _frame(9, 0, 1, b"\x20" * 16384)  # dynamic table size updates: decode to nothing
        for _ in range(4 * hpack.MAX_HEADER_LIST_SIZE // 16384):
            peer.send(fragment)
            sent.append(1)
        peer.conn.recv(1)

    error = _failed(sock_dir, script)
    assert error.code == rpc.INTERNAL
    assert f"header block larger than {hpack.MAX_HEADER_LIST_SIZE} bytes" in error.details
    # dfget stopped reading long before the flood's end (the socket buffers hold the rest at most).
    assert len(sent) < 4 * hpack.MAX_HEADER_LIST_SIZE // 16384


@pytest.mark.parametrize(
    ("frames", "message"),
    [
        # RFC 9113 §6.9.1: a window past 2^31-1 is a FLOW_CONTROL_ERROR, an increment of 0 a PROTOCOL_ERROR.
        ([_frame(8, 0, 0, (2**31 - 1).to_bytes(4, "big"))], "window past 2^31-1"),
        ([_frame(8, 0, 1, (2**31 - 1).to_bytes(4, "big"))], "window past 2^31-1"),
        ([_frame(8, 0, 0, b"\x00\x00\x00\x00")], "WINDOW_UPDATE of 0"),
        # §6.9.2: a SETTINGS_INITIAL_WINDOW_SIZE that takes an open stream's window past 2^31-1.
        (
            [_frame(8, 0, 1, (2**31 - 65536).to_bytes(4, "big")), _frame(4, 0, 0, struct.pack(">HI", 4, 2**31 - 1))],
            "window past 2^31-1",
        ),
        # §6.2: the priority fields are 5 bytes; a HEADERS frame with the flag and fewer bytes is malformed.
        ([_frame(1, 0x24, 1, b"\x00\x00")], "HEADERS shorter than its priority fields"),
    ],
)
def test_flow_control_and_priority_violations_are_clean_errors(
    sock_dir: Path, frames: list[bytes], message: str
) -> None:
    def script(peer: Peer) -> None:
        peer.handshake()
        peer.send(_frame(1, 4, 1, OK_HEADERS) if frames[0][3] != 1 else b"", *frames)
        peer.conn.recv(1)

    error = _failed(sock_dir, script)
    assert error.code == rpc.INTERNAL
    assert message in error.details


def test_data_sent_while_the_request_waits_for_a_window_is_bounded(sock_dir: Path) -> None:
    """A daemon that opens no window for the request and streams answers meanwhile: dfget keeps at most one
    message's worth of them (nothing reads them until the request is sent), then ends the call."""
    sent: list[int] = []

    def script(peer: Peer) -> None:
        assert peer._read(24) == b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
        peer.send(_frame(4, 0, 0, struct.pack(">HI", 4, 0)), _frame(1, 4, 1, OK_HEADERS))
        chunk = _frame(0, 0, 1, _message(b"x" * 16000))
        for _ in range(3 * rpc.MAX_MESSAGE // 16000):
            peer.send(chunk)
            sent.append(1)
        peer.conn.recv(1)

    error = _failed(sock_dir, script)
    assert error.code == rpc.INTERNAL
    assert "before its request was sent" in error.details
    assert len(sent) < 3 * rpc.MAX_MESSAGE // 16000
