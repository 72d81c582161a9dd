"""download.nativeTls: the child's Vortex TLS in rustls checks what Python's ssl checks, and moves the same bytes.

Against a real TLS server on 127.0.0.1 (Python's ssl with the server rules of ``tls.server_ssl_context``): the
native client and its Python twin (``_pyimpl.piece_io``, memory BIOs) are run side by side as each other's oracle.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import threading
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

from dragonfly.common import native, tls
from dragonfly.common.errors import ShortRead
from tests.tls_files import issue_tls_files

pytestmark = pytest.mark.skipif(not native.USING_EXTENSIONS, reason="compares the native client with its twin")

# Small: the twin hashes BLAKE3 in pure Python (~1 MB/s).
PAYLOAD = os.urandom(300 * 1024 + 17)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tls.TLSFiles]:
    """TLS files: a server and a client of one CA, a server named for another IP, a server of another CA."""
    return issue_tls_files(
        tmp_path_factory.mktemp("pki"),
        "native tls tests",
        {
            "server": (True, "127.0.0.1"),
            "client": (True, "127.0.0.1"),
            "elsewhere": (True, "127.0.0.2"),
            "stranger": (False, "127.0.0.1"),
        },
    )


class EchoServer:
    """A TLS server thread: per connection, read 4-byte lengths and answer that many bytes of PAYLOAD; 0 closes."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.context = context
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def addr(self) -> tuple[str, int]:
        host, port = self.listener.getsockname()[:2]
        return host, port

    def _serve(self) -> None:
        while True:
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return
            raw.settimeout(10)
            try:
                with self.context.wrap_socket(raw, server_side=True) as conn:
                    while (request := conn.recv(4)) and (count := int.from_bytes(request, "big")):
                        conn.sendall(PAYLOAD[:count])
            except (OSError, ssl.SSLError) as exc:
                self.errors.append(exc)

    def close(self) -> None:
        # shutdown() wakes the thread's accept(); close() alone would not.
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self.thread.join(10)
        assert not self.thread.is_alive()


@pytest.fixture
def server(files: dict[str, tls.TLSFiles]) -> Iterator[Callable[[str], EchoServer]]:
    started: list[EchoServer] = []

    def start(name: str) -> EchoServer:
        started.append(EchoServer(tls.server_ssl_context(files[name])))
        return started[-1]

    yield start
    for one in started:
        one.close()


IMPLEMENTATIONS = ["native", "python"]


def _module(name: str) -> ModuleType:
    return native.implementations("piece_io")[name]


def _connect(module: ModuleType, files: tls.TLSFiles, addr: tuple[str, int]) -> tuple[socket.socket, object]:
    sock = socket.create_connection(addr, timeout=5)
    try:
        config = module.TlsClientConfig(files.ca_cert, files.cert, files.key)
        return sock, module.TlsClientStream(config, sock.fileno(), addr[0], 5.0)
    except BaseException:
        sock.close()
        raise


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_both_move_the_same_bytes_with_the_same_digests(
    impl: str, files: dict[str, tls.TLSFiles], server: Callable[[str], EchoServer], tmp_path: Path
) -> None:
    module = _module(impl)
    echo = server("server")
    sock, stream = _connect(module, files["client"], echo.addr)
    with sock:
        # Small frames, then a piece through a buffer that does not divide it, on one connection.
        stream.send_all((6).to_bytes(4, "big"), 5.0)  # type: ignore[attr-defined]
        assert stream.recv_exact(6, 5.0) == PAYLOAD[:6]  # type: ignore[attr-defined]
        stream.send_all(len(PAYLOAD).to_bytes(4, "big"), 5.0)  # type: ignore[attr-defined]
        fd = os.open(tmp_path / "out", os.O_RDWR | os.O_CREAT)
        try:
            crc, digest = stream.recv_to_file(fd, 5, len(PAYLOAD), bytearray(100_000), 5.0, True)  # type: ignore[attr-defined]
        finally:
            os.close(fd)
    assert (tmp_path / "out").read_bytes()[5:] == PAYLOAD
    assert crc == zlib.crc32(PAYLOAD)
    assert digest == native.Hasher("blake3", PAYLOAD).digest()
    assert echo.errors == []


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_a_short_answer_is_a_short_read(
    impl: str, files: dict[str, tls.TLSFiles], server: Callable[[str], EchoServer], tmp_path: Path
) -> None:
    module = _module(impl)
    echo = server("server")
    sock, stream = _connect(module, files["client"], echo.addr)
    with sock:
        stream.send_all((1000).to_bytes(4, "big"), 5.0)  # type: ignore[attr-defined]
        stream.send_all((0).to_bytes(4, "big"), 5.0)  # type: ignore[attr-defined]  # the server then closes
        fd = os.open(tmp_path / "out", os.O_RDWR | os.O_CREAT)
        try:
            with pytest.raises(ShortRead) as info:
                stream.recv_to_file(fd, 0, 5000, bytearray(4096), 5.0)  # type: ignore[attr-defined]
        finally:
            os.close(fd)
    assert (info.value.expected, info.value.received) == (5000, 1000)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("who", ["elsewhere", "stranger"])
def test_a_server_not_vouched_for_by_the_cluster_ca_for_this_ip_is_refused(
    impl: str, who: str, files: dict[str, tls.TLSFiles], server: Callable[[str], EchoServer]
) -> None:
    """A certificate for another IP (elsewhere), or of another CA (stranger): refused before any byte is read."""
    module = _module(impl)
    echo = server(who)
    with pytest.raises(ssl.SSLError):
        _connect(module, files["client"], echo.addr)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_a_client_of_another_ca_is_refused_by_the_server(
    impl: str, files: dict[str, tls.TLSFiles], server: Callable[[str], EchoServer]
) -> None:
    module = _module(impl)
    echo = server("server")
    # The stranger trusts our CA's server but presents a certificate our CA did not sign.
    stranger = tls.TLSFiles(ca_cert=files["server"].ca_cert, cert=files["stranger"].cert, key=files["stranger"].key)

    def exchange() -> bytes:
        sock, stream = _connect(module, stranger, echo.addr)
        with sock:
            # TLS 1.3: the client finishes first; the server's refusal arrives with the first read.
            stream.send_all((10).to_bytes(4, "big"), 5.0)  # type: ignore[attr-defined]
            data: bytes = stream.recv_exact(10, 5.0)  # type: ignore[attr-defined]
            return data

    with pytest.raises((ssl.SSLError, ShortRead, ConnectionError)):
        exchange()


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_bad_files_and_arguments_are_clear_errors(impl: str, files: dict[str, tls.TLSFiles], tmp_path: Path) -> None:
    module = _module(impl)
    with pytest.raises(OSError, match=r"cannot read .*missing\.pem"):
        module.TlsClientConfig(str(tmp_path / "missing.pem"), files["client"].cert, files["client"].key)
    config = module.TlsClientConfig(files["client"].ca_cert, files["client"].cert, files["client"].key)
    with socket.socket() as sock, pytest.raises(ValueError, match="server_ip must be an IP address"):
        module.TlsClientStream(config, sock.fileno(), "parent.example", 1.0)
