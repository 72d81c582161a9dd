"""``TlsServerStream``: the parent's Vortex TLS in rustls against its Python twin (Python's ssl, memory BIOs).

Each implementation serves a real TLS client (Python's ssl, blocking) over a socket on 127.0.0.1, driven the way the
asyncio Vortex server drives it: non-blocking steps, and a wait for the readiness each step names.
"""

from __future__ import annotations

import os
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from dragonfly.common import native, tls
from tests.tls_files import issue_tls_files

pytestmark = pytest.mark.skipif(not native.USING_EXTENSIONS, reason="compares the native server with its twin")

IMPLEMENTATIONS = ["native", "python"]
CONTENT = os.urandom(1024 * 1024 + 321)


def _module(name: str) -> ModuleType:
    return native.implementations("piece_io")[name]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tls.TLSFiles]:
    """A server and a client of one CA, and a client of another CA (the stranger)."""
    return issue_tls_files(
        tmp_path_factory.mktemp("pki"),
        "tls server tests",
        {"server": (True, "127.0.0.1"), "client": (True, "127.0.0.1"), "stranger": (False, "127.0.0.1")},
    )


@pytest.fixture(scope="module")
def content(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    path = tmp_path_factory.mktemp("content") / "task"
    path.write_bytes(CONTENT)
    fd = os.open(path, os.O_RDONLY)
    yield fd
    os.close(fd)


def drive(step: Callable[[], Any], sock: socket.socket, timeout: float = 10.0) -> Any:
    """Call ``step`` until it returns something other than "read"/"write", waiting for what it names."""
    deadline = time.monotonic() + timeout
    while (result := step()) in ("read", "write"):
        left = deadline - time.monotonic()
        assert left > 0, f"no progress within {timeout} s (waiting to {result})"
        readable, writable, _ = select.select(
            [sock] if result == "read" else [], [sock] if result == "write" else [], [], left
        )
        assert readable or writable, f"no progress within {timeout} s (waiting to {result})"
    return result


class Server:
    """One connection served in a thread by an implementation: handshake, then per 4-byte request the head
    ``b"HEAD"`` and that many bytes of the content file from offset 7; a request of 0 ends it."""

    def __init__(self, module: ModuleType, files: tls.TLSFiles, content_fd: int) -> None:
        self.config = module.TlsServerConfig(files.ca_cert, files.cert, files.key)
        self.module = module
        self.content_fd = content_fd
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        port: int = self.listener.getsockname()[1]
        return port

    def _serve(self) -> None:
        self.listener.settimeout(10)
        try:
            sock, _ = self.listener.accept()
        except OSError as exc:
            self.error = exc
            return
        with sock:
            sock.setblocking(False)
            try:
                stream = self.module.TlsServerStream(self.config, sock.fileno())
                drive(stream.handshake, sock)
                while True:
                    request = b""
                    while len(request) < 4:
                        want = 4 - len(request)
                        chunk = drive(lambda want=want: stream.recv(want), sock)  # type: ignore[misc]
                        if not chunk:
                            return
                        request += chunk
                    count = int.from_bytes(request, "big")
                    if count == 0:
                        return
                    stream.start_send(b"HEAD", self.content_fd, 7, count)
                    drive(stream.send_some, sock)
            except BaseException as exc:
                self.error = exc

    def close(self) -> None:
        self.listener.close()
        self.thread.join(10)
        assert not self.thread.is_alive()


@pytest.fixture
def serve(files: dict[str, tls.TLSFiles], content: int) -> Iterator[Callable[[str], Server]]:
    started: list[Server] = []

    def start(impl: str) -> Server:
        started.append(Server(_module(impl), files["server"], content))
        return started[-1]

    yield start
    for one in started:
        one.close()


def _client(files: tls.TLSFiles | None, ca_cert: str, port: int) -> ssl.SSLSocket:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=ca_cert)
    if files is not None:
        context.load_cert_chain(files.cert, files.key)
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    return context.wrap_socket(raw, server_hostname="127.0.0.1")


def _recv_exactly(sock: socket.socket, count: int) -> bytes:
    data = bytearray()
    while len(data) < count:
        chunk = sock.recv(min(count - len(data), 1 << 20))
        assert chunk, f"closed after {len(data)} of {count} bytes"
        data += chunk
    return bytes(data)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_both_serve_the_same_bytes_on_one_kept_alive_connection(
    impl: str, files: dict[str, tls.TLSFiles], serve: Callable[[str], Server]
) -> None:
    server = serve(impl)
    with _client(files["client"], files["server"].ca_cert, server.port) as sock:
        for count in (1, 300_000, len(CONTENT) - 7):
            sock.sendall(count.to_bytes(4, "big"))
            assert _recv_exactly(sock, 4 + count) == b"HEAD" + CONTENT[7 : 7 + count]
        sock.sendall((0).to_bytes(4, "big"))
        assert sock.recv(1) == b""
    server.thread.join(10)
    assert server.error is None


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_a_reader_that_does_not_read_makes_a_send_wait_not_block(
    impl: str, files: dict[str, tls.TLSFiles], content: int
) -> None:
    module = _module(impl)
    config = module.TlsServerConfig(files["server"].ca_cert, files["server"].cert, files["server"].key)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.connect(listener.getsockname())
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(cafile=files["client"].ca_cert)
        context.load_cert_chain(files["client"].cert, files["client"].key)
        sock, _ = listener.accept()
        with sock, client:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            sock.setblocking(False)
            stream = module.TlsServerStream(config, sock.fileno())
            # No ClientHello yet: the step says what to wait for instead of waiting.
            assert stream.handshake() == "read"
            handshake = threading.Thread(target=drive, args=(stream.handshake, sock))
            handshake.start()
            tls_client = context.wrap_socket(client, server_hostname="127.0.0.1")
            handshake.join(10)
            stream.start_send(b"", content, 0, len(CONTENT))
            # The client's 4 KiB receive buffer and the server's 4 KiB send buffer hold a fraction of the content.
            assert stream.send_some() == "write"
            with pytest.raises(ValueError, match="a send is already in progress on this connection"):
                stream.start_send(b"", content, 0, 1)
            tls_client.close()


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("who", ["stranger", "anonymous"])
def test_a_client_without_a_certificate_of_the_cluster_ca_is_refused(
    impl: str, who: str, files: dict[str, tls.TLSFiles], serve: Callable[[str], Server]
) -> None:
    server = serve(impl)
    client_files = files["stranger"] if who == "stranger" else None

    def exchange() -> None:
        with _client(client_files, files["server"].ca_cert, server.port) as sock:
            # TLS 1.3: the client finishes first; the server's refusal arrives with the first read.
            sock.sendall((10).to_bytes(4, "big"))
            if not sock.recv(14):
                raise ConnectionResetError("closed without a byte")

    with pytest.raises((ssl.SSLError, ConnectionError)):
        exchange()
    server.thread.join(10)
    assert isinstance(server.error, ssl.SSLError)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_garbage_instead_of_a_handshake_is_a_tls_error(
    impl: str, files: dict[str, tls.TLSFiles], serve: Callable[[str], Server]
) -> None:
    server = serve(impl)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\n\r\n" * 10)
        server.thread.join(10)
    assert isinstance(server.error, ssl.SSLError)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_a_client_that_closes_mid_handshake_is_a_tls_error(
    impl: str, files: dict[str, tls.TLSFiles], serve: Callable[[str], Server]
) -> None:
    server = serve(impl)
    socket.create_connection(("127.0.0.1", server.port), timeout=10).close()
    server.thread.join(10)
    assert isinstance(server.error, ssl.SSLError)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_a_short_file_and_bad_arguments_are_the_same_errors(
    impl: str, files: dict[str, tls.TLSFiles], tmp_path: Path
) -> None:
    module = _module(impl)
    with pytest.raises(OSError, match=r"cannot read .*missing\.pem"):
        module.TlsServerConfig(str(tmp_path / "missing.pem"), files["server"].cert, files["server"].key)
    config = module.TlsServerConfig(files["server"].ca_cert, files["server"].cert, files["server"].key)
    short = tmp_path / "short"
    short.write_bytes(b"x" * 1000)
    fd = os.open(short, os.O_RDONLY)
    try:
        with socket.create_server(("127.0.0.1", 0)) as listener:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.load_verify_locations(cafile=files["client"].ca_cert)
            context.load_cert_chain(files["client"].cert, files["client"].key)
            client = socket.create_connection(listener.getsockname(), timeout=10)
            sock, _ = listener.accept()
            with sock, client:
                sock.setblocking(False)
                stream = module.TlsServerStream(config, sock.fileno())
                handshake = threading.Thread(target=drive, args=(stream.handshake, sock))
                handshake.start()
                tls_client = context.wrap_socket(client, server_hostname="127.0.0.1")
                handshake.join(10)
                with pytest.raises(ValueError, match="offset must be non-negative, got -1"):
                    stream.start_send(b"", fd, -1, 10)
                with pytest.raises(ValueError, match="file_fd must be a file descriptor when length > 0"):
                    stream.start_send(b"", -1, 0, 10)
                with pytest.raises(ValueError, match="count 70000 is larger than a Vortex frame"):
                    stream.recv(70_000)
                stream.start_send(b"", fd, 500, 600)
                with pytest.raises(EOFError, match="file range ends after 500 of 600 bytes"):
                    drive(stream.send_some, sock)
                tls_client.close()
    finally:
        os.close(fd)
