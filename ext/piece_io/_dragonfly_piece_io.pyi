"""Piece I/O for dragonfly: positional piece read/write with CRC-32, sendfile, socket-to-file receive, a whole
piece fetched from a parent in one call, the Vortex codec and a token bucket; every blocking call releases the
GIL."""

from typing import Final, final

from typing_extensions import Buffer

__all__ = [
    "BUILD_PROFILE",
    "HEADER_SIZE",
    "MAX_VALUE_LENGTH",
    "TAG_CACHE_PIECE_CONTENT",
    "TAG_CLOSE",
    "TAG_DOWNLOAD_CACHE_PIECE",
    "TAG_DOWNLOAD_PERSISTENT_CACHE_PIECE",
    "TAG_DOWNLOAD_PERSISTENT_PIECE",
    "TAG_DOWNLOAD_PIECE",
    "TAG_ERROR",
    "TAG_PERSISTENT_CACHE_PIECE_CONTENT",
    "TAG_PERSISTENT_PIECE_CONTENT",
    "TAG_PIECE_CONTENT",
    "PieceMetadata",
    "TlsClientConfig",
    "TlsClientStream",
    "TlsServerConfig",
    "TlsServerStream",
    "TokenBucket",
    "__version__",
    "decode_download_piece",
    "decode_error",
    "decode_header",
    "decode_piece_content",
    "encode_close",
    "encode_download_piece",
    "encode_error",
    "encode_piece_content",
    "fetch_piece",
    "read_piece",
    "recv_to_file",
    "recv_to_file_blake3",
    "sendfile",
    "write_piece",
]

__version__: Final[str]
BUILD_PROFILE: Final[str]

HEADER_SIZE: Final[int]
MAX_VALUE_LENGTH: Final[int]
TAG_DOWNLOAD_PIECE: Final[int]
TAG_PIECE_CONTENT: Final[int]
TAG_DOWNLOAD_PERSISTENT_PIECE: Final[int]
TAG_PERSISTENT_PIECE_CONTENT: Final[int]
TAG_DOWNLOAD_PERSISTENT_CACHE_PIECE: Final[int]
TAG_PERSISTENT_CACHE_PIECE_CONTENT: Final[int]
TAG_DOWNLOAD_CACHE_PIECE: Final[int]
TAG_CACHE_PIECE_CONTENT: Final[int]
TAG_CLOSE: Final[int]
TAG_ERROR: Final[int]

def write_piece(fd: int, offset: int, data: Buffer) -> int: ...
def read_piece(fd: int, offset: int, buffer: Buffer) -> int: ...
def sendfile(sock_fd: int, file_fd: int, offset: int, count: int, timeout: float | None = None) -> int: ...
def recv_to_file(
    sock_fd: int, file_fd: int, offset: int, count: int, buffer: Buffer, timeout: float | None = None
) -> int: ...
def recv_to_file_blake3(
    sock_fd: int, file_fd: int, offset: int, count: int, buffer: Buffer, timeout: float | None = None
) -> tuple[int, bytes]: ...
def fetch_piece(
    sock_fd: int,
    task_id: str,
    number: int,
    offset: int,
    length: int,
    file_fd: int,
    buffer: Buffer,
    timeout: float | None = None,
    *,
    tag: int = 0,
    blake3: bool = False,
    reused: bool = False,
) -> tuple[str, int, bytes | None] | None: ...

@final
class TlsClientConfig:
    def __new__(cls, ca_cert: str, cert: str, key: str) -> TlsClientConfig: ...

@final
class TlsClientStream:
    def __new__(
        cls, config: TlsClientConfig, sock_fd: int, server_ip: str, timeout: float | None = None
    ) -> TlsClientStream: ...
    def send_all(self, data: bytes, timeout: float | None = None) -> None: ...
    def recv_exact(self, count: int, timeout: float | None = None) -> bytes: ...
    def recv_to_file(
        self,
        file_fd: int,
        offset: int,
        count: int,
        buffer: Buffer,
        timeout: float | None = None,
        blake3: bool = False,
    ) -> tuple[int, bytes | None]: ...
    def fetch_piece(
        self,
        task_id: str,
        number: int,
        offset: int,
        length: int,
        file_fd: int,
        buffer: Buffer,
        timeout: float | None = None,
        *,
        tag: int = 0,
        blake3: bool = False,
        reused: bool = False,
    ) -> tuple[str, int, bytes | None] | None: ...

@final
class TlsServerConfig:
    def __new__(cls, ca_cert: str, cert: str, key: str) -> TlsServerConfig: ...

@final
class TlsServerStream:
    def __new__(cls, config: TlsServerConfig, sock_fd: int) -> TlsServerStream: ...
    def handshake(self) -> str | None: ...
    def recv(self, count: int) -> bytes | str: ...
    def start_send(self, head: Buffer, file_fd: int, offset: int, length: int) -> None: ...
    def send_some(self) -> str | None: ...

@final
class TokenBucket:
    def __new__(cls, rate: float, burst: float | None = None) -> TokenBucket: ...
    def acquire(self, n: int) -> None: ...
    def reserve(self, n: int) -> float: ...
    def try_acquire(self, n: int) -> bool: ...
    def set_rate(self, rate: float, burst: float | None = None) -> None: ...
    @property
    def rate(self) -> float: ...
    @property
    def burst(self) -> float: ...

@final
class PieceMetadata:
    def __new__(
        cls,
        *,
        number: int,
        offset: int,
        length: int,
        digest: str,
        parent_id: str,
        traffic_type: int,
        cost_secs: int,
        created_at: int,
    ) -> PieceMetadata: ...
    @property
    def number(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def length(self) -> int: ...
    @property
    def digest(self) -> str: ...
    @property
    def parent_id(self) -> str: ...
    @property
    def traffic_type(self) -> int: ...
    @property
    def cost_secs(self) -> int: ...
    @property
    def created_at(self) -> int: ...
    def __eq__(self, other: object, /) -> bool: ...
    def __hash__(self) -> int: ...

def encode_download_piece(task_id: str, piece_number: int, frame_id: int = 0, tag: int = 0) -> bytes: ...
def decode_header(buf: Buffer) -> tuple[int, int, int]: ...
def decode_download_piece(value: Buffer) -> tuple[str, int]: ...
def encode_piece_content(meta: PieceMetadata, frame_id: int = 0, tag: int = 1) -> bytes: ...
def decode_piece_content(value: Buffer) -> PieceMetadata: ...
def encode_error(code: int, message: str, frame_id: int = 0) -> bytes: ...
def decode_error(value: Buffer) -> tuple[int, str]: ...
def encode_close(frame_id: int = 0) -> bytes: ...
