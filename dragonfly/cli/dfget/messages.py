"""The protobuf wire format of the messages dfget exchanges with the daemon, without the protobuf runtime.

Importing the protobuf runtime and the dragonfly_api modules costs dfget tens of milliseconds at every start
(bench/RESULTS.md §3), for one request out and a stream of small answers in. This module writes
``dfdaemon.v2.DownloadTaskRequest`` from plain values (field names as in the protos: a ``common.v2.Download`` as a
dict, nested messages as dicts, maps as dicts) and reads the parts of ``dfdaemon.v2.DownloadTaskResponse`` dfget
uses, and the same for ``ListTaskEntries`` (``dfget -r``) and for dfcache's persistent cache task calls. The
generated classes of dragonfly_api are its test oracle (tests/unit/cli/test_cli_dfget_messages.py). Malformed input
raises ``MessageError``; unknown fields are skipped, as protobuf does.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

# typing is for the type checker only here: importing it costs a few ms at every dfget start (bench/RESULTS.md §3).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# common.v2.TrafficType
BACK_TO_SOURCE, REMOTE_PEER, LOCAL_PEER = 0, 1, 2

# Wire types.
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5

# Schemas: field name -> (field number, kind); a kind is a scalar's name or a nested schema.
_DURATION: dict[str, Any] = {"seconds": (1, "uint"), "nanos": (2, "uint")}
_OBJECT_STORAGE: dict[str, Any] = {
    "region": (1, "string"),
    "endpoint": (2, "string"),
    "access_key_id": (3, "string"),
    "access_key_secret": (4, "string"),
    "session_token": (5, "string"),
    "credential_path": (6, "string"),
    "predefined_acl": (7, "string"),
    "security_token": (8, "string"),
    "insecure_skip_verify": (9, "bool"),
}
_HDFS: dict[str, Any] = {"delegation_token": (1, "string")}
_HUB: dict[str, Any] = {"token": (1, "string"), "revision": (2, "string"), "base_url": (3, "string")}
DOWNLOAD: dict[str, Any] = {
    "url": (1, "string"),
    "digest": (2, "string"),
    "type": (4, "uint"),
    "tag": (5, "string"),
    "application": (6, "string"),
    "priority": (7, "uint"),
    "filtered_query_params": (8, "strings"),
    "request_header": (9, "map"),
    "piece_length": (10, "uint"),
    "output_path": (11, "string"),
    "timeout": (12, _DURATION),
    "disable_back_to_source": (13, "bool"),
    "certificate_chain": (15, "bytes_list"),
    "object_storage": (17, _OBJECT_STORAGE),
    "hdfs": (18, _HDFS),
    "force_hard_link": (22, "bool"),
    "overwrite": (26, "bool"),
    "hugging_face": (31, _HUB),
    "model_scope": (32, _HUB),
}


LIST_TASK_ENTRIES_REQUEST: dict[str, Any] = {
    "task_id": (1, "string"),
    "url": (2, "string"),
    "request_header": (3, "map"),
    "timeout": (4, _DURATION),
    "certificate_chain": (5, "bytes_list"),
    "object_storage": (6, _OBJECT_STORAGE),
    "hdfs": (7, _HDFS),
    "hugging_face": (9, _HUB),
    "model_scope": (10, _HUB),
}


# dfcache's requests (dfdaemon.v2): persistent cache tasks.
UPLOAD_PERSISTENT_CACHE_TASK_REQUEST: dict[str, Any] = {
    "content_for_calculating_task_id": (1, "string"),
    "path": (2, "string"),
    "persistent_replica_count": (3, "uint"),
    "tag": (4, "string"),
    "application": (5, "string"),
    "piece_length": (6, "uint"),
    "ttl": (7, _DURATION),
    "timeout": (8, _DURATION),
}
DOWNLOAD_PERSISTENT_CACHE_TASK_REQUEST: dict[str, Any] = {
    "task_id": (1, "string"),
    "persistent": (2, "bool"),
    "tag": (3, "string"),
    "application": (4, "string"),
    "output_path": (5, "string"),
    "timeout": (6, _DURATION),
    "need_piece_content": (7, "bool"),
    "force_hard_link": (8, "bool"),
    "overwrite": (11, "bool"),
}
# StatPersistentCacheTaskRequest and DeleteTaskRequest: the task id is all dfcache sends.
TASK_ID_REQUEST: dict[str, Any] = {"task_id": (1, "string")}


class MessageError(ValueError):
    """The bytes are not the message they should be, or the values cannot be written as one."""


def _varint(value: int) -> bytes:
    if value < 0:
        raise ValueError(f"negative value {value} where dfget writes only unsigned ones")
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _utf8(name: str, text: str) -> bytes:
    try:
        return text.encode()
    except UnicodeEncodeError:
        # argv bytes that are not UTF-8 reach Python as surrogate escapes; a protobuf string must be UTF-8.
        raise MessageError(f"{name} is not valid UTF-8: {text!r}") from None


def _length_delimited(number: int, data: bytes) -> bytes:
    return _varint(number << 3 | _LEN) + _varint(len(data)) + data


def encode(schema: Mapping[str, Any], fields: Mapping[str, Any]) -> bytes:
    """Return ``fields`` as the message ``schema`` describes; a field that is None is left out (not set)."""
    out = bytearray()
    for name, value in fields.items():
        if value is None:
            continue
        if name not in schema:
            raise KeyError(f"dfget does not write field {name!r}")
        number, kind = schema[name]
        if isinstance(kind, dict):
            out += _length_delimited(number, encode(kind, value))
        elif kind == "string":
            out += _length_delimited(number, _utf8(name, value))
        elif kind == "uint":
            out += _varint(number << 3 | _VARINT) + _varint(int(value))
        elif kind == "bool":
            out += _varint(number << 3 | _VARINT) + (b"\x01" if value else b"\x00")
        elif kind == "strings":
            for item in value:
                out += _length_delimited(number, _utf8(name, item))
        elif kind == "bytes_list":
            for item in value:
                out += _length_delimited(number, bytes(item))
        elif kind == "map":
            for key, item in value.items():
                out += _length_delimited(
                    number, _length_delimited(1, _utf8(name, key)) + _length_delimited(2, _utf8(name, item))
                )
        else:
            raise AssertionError(f"unknown kind {kind}")
    return bytes(out)


def download_task_request(download: Mapping[str, Any]) -> bytes:
    """Return the ``DownloadTaskRequest`` of a ``common.v2.Download`` given as a dict."""
    return _length_delimited(1, encode(DOWNLOAD, download))


def _read_varint(data: bytes | memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data):
            raise MessageError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value & 0xFFFFFFFFFFFFFFFF, pos
        shift += 7
        if shift >= 70:
            raise MessageError("varint longer than 10 bytes")


def _fields(data: bytes | memoryview) -> Iterator[tuple[int, int, Any]]:
    """Yield (number, wire type, value) for each field: an int for numbers, bytes for length-delimited ones (a
    memoryview of ``data`` when it is one: no copy)."""
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise MessageError("field number 0")
        value: Any
        if wire == _VARINT:
            value, pos = _read_varint(data, pos)
        elif wire == _LEN:
            length, pos = _read_varint(data, pos)
            if pos + length > len(data):
                raise MessageError("length-delimited field past the end")
            value, pos = data[pos : pos + length], pos + length
        elif wire in (_I64, _I32):
            size = 8 if wire == _I64 else 4
            if pos + size > len(data):
                raise MessageError("fixed-size field past the end")
            value, pos = int.from_bytes(data[pos : pos + size], "little"), pos + size
        else:
            raise MessageError(f"wire type {wire}")
        yield number, wire, value


def _text(raw: bytes | memoryview) -> str:
    try:
        return str(raw, "utf-8")
    except UnicodeDecodeError:
        raise MessageError("a string field is not UTF-8") from None


def _signed(value: int) -> int:
    """Return a varint read as uint64 as the int64 (or negative int32) it encodes."""
    return value - (1 << 64) if value >= 1 << 63 else value


def _seconds_and_nanos(data: bytes | memoryview) -> tuple[int, int]:
    """Return a ``google.protobuf.Duration`` or ``Timestamp`` as (seconds, nanos)."""
    seconds = nanos = 0
    for number, wire, value in _fields(data):
        if wire == _VARINT and number == 1:
            seconds = _signed(value)
        elif wire == _VARINT and number == 2:
            nanos = _signed(value)
    return seconds, nanos


class Piece:
    """The parts of a ``common.v2.Piece`` dfget counts."""

    __slots__ = ("length", "number", "offset", "parent_id", "traffic_type")

    def __init__(self, data: bytes) -> None:
        self.number = self.offset = self.length = self.traffic_type = 0
        self.parent_id = ""
        for number, wire, value in _fields(data):
            if wire == _VARINT:
                if number == 1:
                    self.number = value & 0xFFFFFFFF
                elif number == 3:
                    self.offset = value
                elif number == 4:
                    self.length = value
                elif number == 7:
                    self.traffic_type = value & 0xFFFFFFFF
            elif wire == _LEN and number == 2:
                self.parent_id = _text(value)


class Started:
    """The parts of a ``DownloadTaskStartedResponse`` dfget uses; ``range`` is (start, length) or None."""

    __slots__ = ("content_length", "is_finished", "range")

    def __init__(self, data: bytes) -> None:
        self.content_length = 0
        self.is_finished = False
        self.range: tuple[int, int] | None = None
        for number, wire, value in _fields(data):
            if wire == _VARINT:
                if number == 1:
                    self.content_length = value
                elif number == 5:
                    self.is_finished = value != 0
            elif wire == _LEN and number == 2:
                start = length = 0
                for inner, inner_wire, inner_value in _fields(value):
                    if inner_wire == _VARINT and inner == 1:
                        start = inner_value
                    elif inner_wire == _VARINT and inner == 2:
                        length = inner_value
                self.range = (start, length)


class DownloadTaskResponse:
    """A ``dfdaemon.v2.DownloadTaskResponse``: ``started`` or ``piece`` (its oneof), or neither."""

    __slots__ = ("peer_id", "piece", "started", "task_id")

    def __init__(self, data: bytes) -> None:
        self.task_id = self.peer_id = ""
        self.started: Started | None = None
        self.piece: Piece | None = None
        for number, wire, value in _fields(data):
            if wire != _LEN:
                continue
            if number == 2:
                self.task_id = _text(value)
            elif number == 3:
                self.peer_id = _text(value)
            elif number == 4:
                self.started, self.piece = Started(value), None
            elif number == 5:
                self.started, self.piece = None, None
                for inner, inner_wire, inner_value in _fields(value):
                    if inner == 1 and inner_wire == _LEN:
                        self.piece = Piece(inner_value)
                if self.piece is None:
                    # A DownloadPieceFinishedResponse without its piece: protobuf reads an empty one.
                    self.piece = Piece(b"")


class Entry:
    """A ``dfdaemon.v2.Entry`` of a ListTaskEntriesResponse: one object or directory under the listed URL."""

    __slots__ = ("content_length", "is_dir", "url")

    def __init__(self, data: bytes) -> None:
        self.url = ""
        self.content_length = 0
        self.is_dir = False
        for number, wire, value in _fields(data):
            if wire == _LEN and number == 1:
                self.url = _text(value)
            elif wire == _VARINT and number == 2:
                self.content_length = value
            elif wire == _VARINT and number == 3:
                self.is_dir = value != 0


def list_task_entries(data: bytes) -> list[Entry]:
    """Return the entries of a ``dfdaemon.v2.ListTaskEntriesResponse``."""
    return [Entry(value) for number, wire, value in _fields(data) if number == 4 and wire == _LEN]


class PersistentCacheTask:
    """The parts of a ``common.v2.PersistentCacheTask`` dfcache shows (``stat``) or prints (``import``: the id)."""

    __slots__ = (
        "application",
        "content_length",
        "created_at",
        "current_persistent_replica_count",
        "current_replica_count",
        "id",
        "persistent_replica_count",
        "piece_count",
        "piece_length",
        "state",
        "tag",
        "ttl",
    )

    def __init__(self, data: bytes) -> None:
        self.id = self.tag = self.application = self.state = ""
        self.persistent_replica_count = self.current_persistent_replica_count = self.current_replica_count = 0
        self.piece_length = self.content_length = self.piece_count = 0
        self.ttl = 0.0
        # Seconds since the epoch (Timestamp.seconds).
        self.created_at = 0
        for number, wire, value in _fields(data):
            if wire == _VARINT:
                if number == 2:
                    self.persistent_replica_count = value
                elif number == 3:
                    self.current_persistent_replica_count = value
                elif number == 4:
                    self.current_replica_count = value
                elif number == 7:
                    self.piece_length = value
                elif number == 8:
                    self.content_length = value
                elif number == 9:
                    self.piece_count = value & 0xFFFFFFFF
            elif wire == _LEN:
                if number == 1:
                    self.id = _text(value)
                elif number == 5:
                    self.tag = _text(value)
                elif number == 6:
                    self.application = _text(value)
                elif number == 10:
                    self.state = _text(value)
                elif number == 11:
                    seconds, nanos = _seconds_and_nanos(value)
                    self.ttl = seconds + nanos * 1e-9
                elif number == 12:
                    self.created_at = _seconds_and_nanos(value)[0]


class PersistentCacheDownload:
    """A ``dfdaemon.v2.DownloadPersistentCacheTaskResponse``: the content length once started, or a piece's
    offset and content (a view of the message's bytes, only when the request asked for it)."""

    __slots__ = ("content", "content_length", "offset")

    def __init__(self, data: bytes) -> None:
        self.content_length: int | None = None
        self.content: memoryview | None = None
        self.offset = 0
        for number, wire, value in _fields(memoryview(data)):
            if wire != _LEN:
                continue
            if number == 4:
                self.content_length, self.content = 0, None
                for inner, inner_wire, inner_value in _fields(value):
                    if inner == 1 and inner_wire == _VARINT:
                        self.content_length = inner_value
            elif number == 5:
                self.content_length, self.content, self.offset = None, None, 0
                for inner, inner_wire, inner_value in _fields(value):
                    if inner == 1 and inner_wire == _LEN:
                        for field, field_wire, field_value in _fields(inner_value):
                            if field == 6 and field_wire == _LEN:
                                self.content = field_value
                            elif field == 3 and field_wire == _VARINT:
                                self.offset = field_value
