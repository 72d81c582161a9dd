"""The Vortex frame codec: the twin of ``vortex.rs`` (``docs/reference/protocol.md#vortex``)."""

from __future__ import annotations

import operator
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from dragonfly.common._pyimpl.checks import I64_MAX, I64_MIN, bytes_of
from dragonfly.common.errors import VortexError

if TYPE_CHECKING:
    from typing_extensions import Buffer

HEADER_SIZE: Final = 6
#: Upper bound of a frame value: values carry only control data (piece bytes follow unframed).
MAX_VALUE_LENGTH: Final = 64 * 1024

TAG_DOWNLOAD_PIECE: Final = 0
TAG_PIECE_CONTENT: Final = 1
TAG_DOWNLOAD_PERSISTENT_PIECE: Final = 2
TAG_PERSISTENT_PIECE_CONTENT: Final = 3
TAG_DOWNLOAD_PERSISTENT_CACHE_PIECE: Final = 4
TAG_PERSISTENT_CACHE_PIECE_CONTENT: Final = 5
TAG_DOWNLOAD_CACHE_PIECE: Final = 6
TAG_CACHE_PIECE_CONTENT: Final = 7
TAG_CLOSE: Final = 254
TAG_ERROR: Final = 255

_TASK_ID_LENGTH: Final = 64
_DOWNLOAD_PIECE_LENGTH: Final = _TASK_ID_LENGTH + 4
_MIN_METADATA_LENGTH: Final = 4 + 8 + 8 + 4 + 4 + 1 + 8 + 8
_HEX: Final = frozenset(b"0123456789abcdef")
_RANGES: Final = {"u8": (0, 2**8 - 1), "u32": (0, 2**32 - 1), "u64": (0, 2**64 - 1), "i64": (I64_MIN, I64_MAX)}
_HEADER: Final = struct.Struct(">BBI")
_U32: Final = struct.Struct(">I")
_FIXED_HEAD: Final = struct.Struct(">IQQ")  # number, offset, length
_FIXED_TAIL: Final = struct.Struct(">BQq")  # traffic_type, cost_secs, created_at


def _is_download_tag(tag: int) -> bool:
    return tag <= TAG_CACHE_PIECE_CONTENT and tag % 2 == 0


def _is_content_tag(tag: int) -> bool:
    return tag <= TAG_CACHE_PIECE_CONTENT and tag % 2 == 1


def _wire_int(name: str, value: int, kind: str) -> int:
    low, high = _RANGES[kind]
    if not low <= value <= high:
        raise VortexError(f"{name} {value} out of range for {kind}")
    return value


def _check_value_length(length: int) -> None:
    if length > MAX_VALUE_LENGTH:
        raise VortexError(f"value length {length} exceeds MAX_VALUE_LENGTH {MAX_VALUE_LENGTH}")


def _check_task_id(task_id: bytes) -> None:
    if len(task_id) != _TASK_ID_LENGTH or not _HEX.issuperset(task_id):
        raise VortexError(f"task_id must be {_TASK_ID_LENGTH} lowercase hex characters")


_METADATA_INTS: Final = (
    ("number", "u32"),
    ("offset", "u64"),
    ("length", "u64"),
    ("traffic_type", "u8"),
    ("cost_secs", "u64"),
    ("created_at", "i64"),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class PieceMetadata:
    """Metadata of one piece, as a Vortex PieceContent frame carries it."""

    number: int
    offset: int
    length: int
    digest: str
    parent_id: str
    traffic_type: int
    cost_secs: int
    created_at: int

    def __post_init__(self) -> None:
        for name in ("number", "offset", "length", "digest", "parent_id", "traffic_type", "cost_secs", "created_at"):
            value = getattr(self, name)
            if name in ("digest", "parent_id"):
                if not isinstance(value, str):
                    raise TypeError(f"argument '{name}': '{type(value).__name__}' object cannot be converted to 'str'")
                value.encode()
            else:
                object.__setattr__(self, name, operator.index(value))
        for name, kind in _METADATA_INTS:
            _wire_int(name, getattr(self, name), kind)


def _header(frame_id: int, tag: int, length: int) -> bytes:
    return _HEADER.pack(frame_id, tag, length)


def decode_header(buf: Buffer) -> tuple[int, int, int]:
    """Decode a header into ``(frame_id, tag, length)``, checking the tag and that the length suits it."""
    data = bytes_of(buf)
    if len(data) != HEADER_SIZE:
        raise VortexError(f"header must be {HEADER_SIZE} bytes, got {len(data)}")
    frame_id, tag, length = _HEADER.unpack(data)
    if _is_download_tag(tag):
        fits = length == _DOWNLOAD_PIECE_LENGTH
    elif _is_content_tag(tag):
        fits = 4 + _MIN_METADATA_LENGTH <= length <= MAX_VALUE_LENGTH
    elif tag == TAG_CLOSE:
        fits = length == 0
    elif tag == TAG_ERROR:
        fits = 1 <= length <= MAX_VALUE_LENGTH
    else:
        raise VortexError(f"unknown tag {tag}")
    if not fits:
        _check_value_length(length)
        raise VortexError(f"value length {length} is invalid for tag {tag}")
    return frame_id, tag, length


def encode_download_piece(task_id: str, piece_number: int, frame_id: int = 0, tag: int = TAG_DOWNLOAD_PIECE) -> bytes:
    """Encode a request frame for one piece."""
    if not isinstance(task_id, str):
        raise TypeError(f"argument 'task_id': '{type(task_id).__name__}' object cannot be converted to 'str'")
    task_bytes = task_id.encode()
    piece_number, frame_id, tag = operator.index(piece_number), operator.index(frame_id), operator.index(tag)
    _wire_int("piece_number", piece_number, "u32")
    _wire_int("frame_id", frame_id, "u8")
    _wire_int("tag", tag, "u8")
    if not _is_download_tag(tag):
        raise VortexError(f"tag {tag} is not a download piece tag")
    _check_task_id(task_bytes)
    return _header(frame_id, tag, _DOWNLOAD_PIECE_LENGTH) + task_bytes + _U32.pack(piece_number)


def decode_download_piece(value: Buffer) -> tuple[str, int]:
    """Decode a request value into ``(task_id, piece_number)``."""
    data = bytes_of(value)
    if len(data) != _DOWNLOAD_PIECE_LENGTH:
        raise VortexError(f"download piece value must be {_DOWNLOAD_PIECE_LENGTH} bytes, got {len(data)}")
    _check_task_id(data[:_TASK_ID_LENGTH])
    return data[:_TASK_ID_LENGTH].decode("ascii"), _U32.unpack_from(data, _TASK_ID_LENGTH)[0]


def encode_piece_content(meta: PieceMetadata, frame_id: int = 0, tag: int = TAG_PIECE_CONTENT) -> bytes:
    """Encode the header and value of a piece content frame (the piece bytes are sent after it)."""
    if not isinstance(meta, PieceMetadata):
        raise TypeError(f"argument 'meta': '{type(meta).__name__}' object is not an instance of 'PieceMetadata'")
    frame_id, tag = operator.index(frame_id), operator.index(tag)
    _wire_int("frame_id", frame_id, "u8")
    _wire_int("tag", tag, "u8")
    if not _is_content_tag(tag):
        raise VortexError(f"tag {tag} is not a piece content tag")
    digest = meta.digest.encode()
    parent_id = meta.parent_id.encode()
    metadata_len = _MIN_METADATA_LENGTH + len(digest) + len(parent_id)
    _check_value_length(4 + metadata_len)
    return b"".join(
        (
            _header(frame_id, tag, 4 + metadata_len),
            _U32.pack(metadata_len),
            _FIXED_HEAD.pack(meta.number, meta.offset, meta.length),
            _U32.pack(len(digest)),
            digest,
            _U32.pack(len(parent_id)),
            parent_id,
            _FIXED_TAIL.pack(meta.traffic_type, meta.cost_secs, meta.created_at),
        )
    )


class _Reader:
    """Read big-endian fields off a value, naming the field when it runs out."""

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    @property
    def left(self) -> int:
        return len(self._data) - self._pos

    def take(self, field: str, n: int) -> bytes:
        if n > self.left:
            raise VortexError(f"truncated {field}: need {n} bytes, {self.left} left")
        chunk = self._data[self._pos : self._pos + n]
        self._pos += n
        return chunk

    def integer(self, field: str, size: int, signed: bool = False) -> int:
        return int.from_bytes(self.take(field, size), "big", signed=signed)

    def text(self, field: str, n: int) -> str:
        raw = self.take(field, n)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise VortexError(f"{field} is not valid UTF-8") from None

    def finish(self, last_field: str) -> None:
        if self.left:
            raise VortexError(f"{self.left} trailing bytes after {last_field}")


def decode_piece_content(value: Buffer) -> PieceMetadata:
    """Decode a piece content value (``metadata_len:u32`` + metadata) into its metadata."""
    data = bytes_of(value)
    _check_value_length(len(data))
    r = _Reader(data)
    metadata_len = r.integer("metadata_len", 4)
    if metadata_len != r.left:
        raise VortexError(f"metadata_len {metadata_len} does not match the {r.left} bytes that follow")
    number = r.integer("number", 4)
    offset = r.integer("offset", 8)
    length = r.integer("length", 8)
    digest = r.text("digest", r.integer("digest_len", 4))
    parent_id = r.text("parent_id", r.integer("parent_id_len", 4))
    traffic_type = r.integer("traffic_type", 1)
    cost_secs = r.integer("cost_secs", 8)
    created_at = r.integer("created_at", 8, signed=True)
    r.finish("created_at")
    return PieceMetadata(
        number=number,
        offset=offset,
        length=length,
        digest=digest,
        parent_id=parent_id,
        traffic_type=traffic_type,
        cost_secs=cost_secs,
        created_at=created_at,
    )


def encode_error(code: int, message: str, frame_id: int = 0) -> bytes:
    """Encode an error frame."""
    code = operator.index(code)
    if not isinstance(message, str):
        raise TypeError(f"argument 'message': '{type(message).__name__}' object cannot be converted to 'str'")
    text = message.encode()
    frame_id = operator.index(frame_id)
    _wire_int("code", code, "u8")
    _wire_int("frame_id", frame_id, "u8")
    _check_value_length(1 + len(text))
    return _header(frame_id, TAG_ERROR, 1 + len(text)) + bytes((code,)) + text


def decode_error(value: Buffer) -> tuple[int, str]:
    """Decode an error value into ``(code, message)``."""
    data = bytes_of(value)
    _check_value_length(len(data))
    r = _Reader(data)
    code = r.integer("code", 1)
    return code, r.text("message", r.left)


def encode_close(frame_id: int = 0) -> bytes:
    """Encode a close frame (empty value)."""
    frame_id = operator.index(frame_id)
    _wire_int("frame_id", frame_id, "u8")
    return _header(frame_id, TAG_CLOSE, 0)
