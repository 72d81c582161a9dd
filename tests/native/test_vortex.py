"""The Vortex codec, native against its twin: byte-identical frames, strict decoding, and fuzzed input."""

from __future__ import annotations

import struct
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dragonfly.common import native
from dragonfly.common.errors import VortexError

IMPLS = native.implementations("piece_io")
NATIVE = IMPLS["native"]
TWIN = IMPLS["python"]

TASK_ID = "a" * 32 + "0123456789abcdef" * 2
FIELDS = ("number", "offset", "length", "digest", "parent_id", "traffic_type", "cost_secs", "created_at")
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DIFF = settings(max_examples=100, deadline=None)


@pytest.fixture(params=["native", "python"])
def impl(request: pytest.FixtureRequest) -> ModuleType:
    return IMPLS[request.param]


def outcome(call: Callable[[], Any]) -> tuple[str, Any]:
    """Return what a call did, comparable across implementations: its value or its exception and message."""
    try:
        return ("ok", call())
    except Exception as exc:
        return (type(exc).__name__, str(exc))


def fields(meta: Any) -> tuple[Any, ...]:
    return tuple(getattr(meta, name) for name in FIELDS)


def sample_meta(impl: ModuleType, **changes: Any) -> Any:
    values: dict[str, Any] = {
        "number": 3,
        "offset": 3 * 4 * 1024 * 1024,
        "length": 4 * 1024 * 1024,
        "digest": "crc32:3299754941",
        "parent_id": "127.0.0.1-seed-peer-1",
        "traffic_type": 1,
        "cost_secs": 2,
        "created_at": 1_700_000_000,
    }
    values.update(changes)
    return impl.PieceMetadata(**values)


def test_constants_match(impl: ModuleType) -> None:
    assert impl.HEADER_SIZE == 6
    assert impl.MAX_VALUE_LENGTH == 64 * 1024
    tags = (
        "TAG_DOWNLOAD_PIECE",
        "TAG_PIECE_CONTENT",
        "TAG_DOWNLOAD_PERSISTENT_PIECE",
        "TAG_PERSISTENT_PIECE_CONTENT",
        "TAG_DOWNLOAD_PERSISTENT_CACHE_PIECE",
        "TAG_PERSISTENT_CACHE_PIECE_CONTENT",
        "TAG_DOWNLOAD_CACHE_PIECE",
        "TAG_CACHE_PIECE_CONTENT",
    )
    assert [getattr(impl, name) for name in tags] == list(range(8))
    assert (impl.TAG_CLOSE, impl.TAG_ERROR) == (254, 255)


def test_download_piece_wire_format(impl: ModuleType) -> None:
    frame = impl.encode_download_piece(TASK_ID, 0x01020304, frame_id=9)
    assert frame == bytes([9, 0, 0, 0, 0, 68]) + TASK_ID.encode() + bytes([1, 2, 3, 4])
    assert len(frame) == 74
    assert impl.decode_header(frame[:6]) == (9, 0, 68)
    assert impl.decode_download_piece(frame[6:]) == (TASK_ID, 0x01020304)


def test_piece_content_wire_format(impl: ModuleType) -> None:
    meta = sample_meta(impl, digest="crc32:1", parent_id="p", created_at=-1)
    frame = impl.encode_piece_content(meta, frame_id=2)
    metadata = (
        struct.pack(">IQQ", 3, 3 * 4 * 1024 * 1024, 4 * 1024 * 1024)
        + struct.pack(">I", 7)
        + b"crc32:1"
        + struct.pack(">I", 1)
        + b"p"
        + struct.pack(">BQq", 1, 2, -1)
    )
    assert frame == struct.pack(">BBI", 2, 1, 4 + len(metadata)) + struct.pack(">I", len(metadata)) + metadata
    assert impl.decode_header(frame[:6]) == (2, 1, 4 + len(metadata))
    assert fields(impl.decode_piece_content(frame[6:])) == fields(meta)


def test_error_and_close_wire_format(impl: ModuleType) -> None:
    frame = impl.encode_error(2, "piece 3 not found", frame_id=1)
    assert frame == bytes([1, 255, 0, 0, 0, 18, 2]) + b"piece 3 not found"
    assert impl.decode_error(frame[6:]) == (2, "piece 3 not found")
    assert impl.encode_close(7) == bytes([7, 254, 0, 0, 0, 0])
    assert impl.decode_header(impl.encode_close()) == (0, 254, 0)


def test_decoders_accept_any_bytes_like(impl: ModuleType) -> None:
    frame = impl.encode_download_piece(TASK_ID, 5)
    assert impl.decode_header(bytearray(frame[:6])) == (0, 0, 68)
    assert impl.decode_download_piece(memoryview(frame)[6:]) == (TASK_ID, 5)
    with pytest.raises(BufferError, match="C-contiguous"):
        impl.decode_header(memoryview(frame * 2)[::2][:6])


def test_piece_metadata_behaves_like_a_frozen_record(impl: ModuleType) -> None:
    meta = sample_meta(impl)
    assert meta == sample_meta(impl)
    assert meta != sample_meta(impl, number=4)
    assert hash(meta) == hash(fields(meta))
    with pytest.raises(AttributeError):
        meta.number = 5
    with pytest.raises(TypeError):
        impl.PieceMetadata(3, 0, 0, "", "", 1, 0, 0)


def test_piece_metadata_repr_matches_twin() -> None:
    assert repr(sample_meta(NATIVE, digest="it's")) == repr(sample_meta(TWIN, digest="it's"))
    assert repr(sample_meta(TWIN)).startswith("PieceMetadata(number=3, offset=12582912, length=4194304, digest='crc32:")


ERROR_CASES: list[tuple[str, Callable[[ModuleType], Any], str]] = [
    ("short header", lambda m: m.decode_header(b"\x00\x00\x00\x00\x00"), "header must be 6 bytes, got 5"),
    ("long header", lambda m: m.decode_header(b"\x00" * 7), "header must be 6 bytes, got 7"),
    ("reserved tag", lambda m: m.decode_header(bytes([0, 8, 0, 0, 0, 0])), "unknown tag 8"),
    ("reserved tag 253", lambda m: m.decode_header(bytes([0, 253, 0, 0, 0, 0])), "unknown tag 253"),
    (
        "length above max",
        lambda m: m.decode_header(bytes([0, 1, 0, 1, 0, 1])),
        "value length 65537 exceeds MAX_VALUE_LENGTH 65536",
    ),
    ("request length", lambda m: m.decode_header(bytes([0, 0, 0, 0, 0, 67])), "value length 67 is invalid for tag 0"),
    ("close length", lambda m: m.decode_header(bytes([0, 254, 0, 0, 0, 1])), "value length 1 is invalid for tag 254"),
    ("error length", lambda m: m.decode_header(bytes([0, 255, 0, 0, 0, 0])), "value length 0 is invalid for tag 255"),
    ("content length", lambda m: m.decode_header(bytes([0, 1, 0, 0, 0, 48])), "value length 48 is invalid for tag 1"),
    (
        "request value length",
        lambda m: m.decode_download_piece(b"a" * 67),
        "download piece value must be 68 bytes, got 67",
    ),
    (
        "upper-case task id",
        lambda m: m.decode_download_piece(TASK_ID.upper().encode() + b"\x00" * 4),
        "task_id must be 64 lowercase hex characters",
    ),
    (
        "non-UTF-8 task id",
        lambda m: m.decode_download_piece(b"\xff" * 64 + b"\x00" * 4),
        "task_id must be 64 lowercase hex characters",
    ),
    (
        "short task id to encode",
        lambda m: m.encode_download_piece("abc", 1),
        "task_id must be 64 lowercase hex characters",
    ),
    (
        "content tag for request",
        lambda m: m.encode_download_piece(TASK_ID, 1, tag=1),
        "tag 1 is not a download piece tag",
    ),
    (
        "piece number out of range",
        lambda m: m.encode_download_piece(TASK_ID, 2**32),
        "piece_number 4294967296 out of range for u32",
    ),
    ("negative frame id", lambda m: m.encode_close(-1), "frame_id -1 out of range for u8"),
    ("huge frame id", lambda m: m.encode_close(2**200), f"frame_id {2**200} out of range for u8"),
    ("error code out of range", lambda m: m.encode_error(256, "x"), "code 256 out of range for u8"),
    (
        "error message too long",
        lambda m: m.encode_error(1, "e" * 65536),
        "value length 65537 exceeds MAX_VALUE_LENGTH 65536",
    ),
    ("empty error value", lambda m: m.decode_error(b""), "truncated code: need 1 bytes, 0 left"),
    ("error message not UTF-8", lambda m: m.decode_error(b"\x01\xc3"), "message is not valid UTF-8"),
    ("surrogate in error message", lambda m: m.decode_error(b"\x01\xed\xa0\x80"), "message is not valid UTF-8"),
    (
        "truncated metadata_len",
        lambda m: m.decode_piece_content(b"\x00\x00"),
        "truncated metadata_len: need 4 bytes, 2 left",
    ),
    (
        "metadata_len mismatch",
        lambda m: m.decode_piece_content(struct.pack(">I", 100) + b"\x00" * 60),
        "metadata_len 100 does not match the 60 bytes that follow",
    ),
    (
        "digest overruns the value",
        lambda m: m.decode_piece_content(struct.pack(">IIQQI", 60, 0, 0, 0, 1000) + b"\x00" * 36),
        "truncated digest: need 1000 bytes, 36 left",
    ),
    (
        "digest not UTF-8",
        lambda m: m.decode_piece_content(struct.pack(">IIQQI", 50, 0, 0, 0, 1) + b"\xff" + b"\x00" * 25),
        "digest is not valid UTF-8",
    ),
    (
        "trailing bytes",
        lambda m: m.decode_piece_content(struct.pack(">IIQQII", 46, 0, 0, 0, 0, 0) + b"\x00" * 18),
        "1 trailing bytes after created_at",
    ),
    (
        "truncated created_at",
        lambda m: m.decode_piece_content(struct.pack(">IIQQII", 44, 0, 0, 0, 0, 0) + b"\x00" * 16),
        "truncated created_at: need 8 bytes, 7 left",
    ),
    (
        "metadata value above max",
        lambda m: m.decode_piece_content(b"\x00" * 65537),
        "value length 65537 exceeds MAX_VALUE_LENGTH 65536",
    ),
    ("metadata field out of range", lambda m: sample_meta(m, traffic_type=256), "traffic_type 256 out of range for u8"),
    ("negative offset", lambda m: sample_meta(m, offset=-1), "offset -1 out of range for u64"),
    (
        "created_at below i64",
        lambda m: sample_meta(m, created_at=-(2**63) - 1),
        f"created_at {-(2**63) - 1} out of range for i64",
    ),
    (
        "request tag for content",
        lambda m: m.encode_piece_content(sample_meta(m), tag=0),
        "tag 0 is not a piece content tag",
    ),
    (
        "metadata too long to encode",
        lambda m: m.encode_piece_content(sample_meta(m, parent_id="x" * 65536)),
        f"value length {4 + 45 + len('crc32:3299754941') + 65536} exceeds MAX_VALUE_LENGTH 65536",
    ),
]


@pytest.mark.parametrize(("call", "message"), [case[1:] for case in ERROR_CASES], ids=[case[0] for case in ERROR_CASES])
def test_malformed_input_raises_vortex_error(impl: ModuleType, call: Callable[[ModuleType], Any], message: str) -> None:
    with pytest.raises(VortexError) as excinfo:
        call(impl)
    assert str(excinfo.value) == message
    assert isinstance(excinfo.value, ValueError)


def test_wrong_types_raise_type_error(impl: ModuleType) -> None:
    with pytest.raises(TypeError):
        impl.encode_download_piece(TASK_ID, 1.0)
    with pytest.raises(TypeError):
        impl.encode_piece_content(object())
    with pytest.raises(TypeError):
        sample_meta(impl, digest=b"crc32:1")
    with pytest.raises(TypeError):
        impl.decode_header(6)


def test_encode_piece_content_rejects_the_other_implementations_metadata() -> None:
    with pytest.raises(TypeError):
        NATIVE.encode_piece_content(sample_meta(TWIN))
    with pytest.raises(TypeError):
        TWIN.encode_piece_content(sample_meta(NATIVE))


u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
text = st.text(max_size=200)
task_ids = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)


@DIFF
@given(task_id=task_ids, number=u32, frame_id=st.integers(0, 255), tag=st.sampled_from([0, 2, 4, 6]))
def test_download_piece_roundtrip_matches_twin(task_id: str, number: int, frame_id: int, tag: int) -> None:
    frame = NATIVE.encode_download_piece(task_id, number, frame_id, tag)
    assert frame == TWIN.encode_download_piece(task_id, number, frame_id, tag)
    for impl in (NATIVE, TWIN):
        assert impl.decode_header(frame[:6]) == (frame_id, tag, 68)
        assert impl.decode_download_piece(frame[6:]) == (task_id, number)


@DIFF
@given(
    values=st.fixed_dictionaries(
        {
            "number": u32,
            "offset": u64,
            "length": u64,
            "digest": text,
            "parent_id": text,
            "traffic_type": st.integers(0, 255),
            "cost_secs": u64,
            "created_at": st.integers(-(2**63), 2**63 - 1),
        }
    ),
    tag=st.sampled_from([1, 3, 5, 7]),
)
def test_piece_content_roundtrip_matches_twin(values: dict[str, Any], tag: int) -> None:
    frame = NATIVE.encode_piece_content(NATIVE.PieceMetadata(**values), 4, tag)
    assert frame == TWIN.encode_piece_content(TWIN.PieceMetadata(**values), 4, tag)
    for impl in (NATIVE, TWIN):
        _, got_tag, length = impl.decode_header(frame[:6])
        assert (got_tag, length) == (tag, len(frame) - 6)
        assert fields(impl.decode_piece_content(frame[6:])) == tuple(values[name] for name in FIELDS)


@DIFF
@given(code=st.integers(0, 255), message=text)
def test_error_roundtrip_matches_twin(code: int, message: str) -> None:
    frame = NATIVE.encode_error(code, message)
    assert frame == TWIN.encode_error(code, message)
    for impl in (NATIVE, TWIN):
        assert impl.decode_error(frame[6:]) == (code, message)


def decoders(impl: ModuleType) -> list[Callable[[bytes], Any]]:
    return [impl.decode_header, impl.decode_download_piece, impl.decode_piece_content, impl.decode_error]


def comparable(call: Callable[[], Any]) -> tuple[str, Any]:
    kind, value = outcome(call)
    return (kind, fields(value)) if kind == "ok" and hasattr(value, "digest") else (kind, value)


def piece_content_like(data: bytes) -> bytes:
    """Bytes with a plausible metadata_len prefix, so fuzzing reaches the inner fields."""
    return struct.pack(">I", len(data)) + data


fuzz_bytes = st.one_of(
    st.binary(max_size=128),
    st.binary(max_size=128).map(piece_content_like),
    st.binary(min_size=6, max_size=6),
)


@FUZZ
@given(data=fuzz_bytes)
def test_fuzzed_input_only_raises_vortex_error_and_twins_agree(data: bytes) -> None:
    for native_decode, twin_decode in zip(decoders(NATIVE), decoders(TWIN), strict=True):
        native_result = comparable(lambda: native_decode(data))  # noqa: B023
        assert native_result[0] in ("ok", "VortexError"), native_result
        assert native_result == comparable(lambda: twin_decode(data))  # noqa: B023


@FUZZ
@given(
    meta=st.builds(
        dict,
        number=u32,
        offset=u64,
        length=u64,
        digest=text,
        parent_id=text,
        traffic_type=st.integers(0, 255),
        cost_secs=u64,
        created_at=st.integers(-(2**63), 2**63 - 1),
    ),
    cut=st.integers(0, 300),
    flip=st.tuples(st.integers(0, 300), st.integers(1, 255)),
)
def test_mutated_piece_content_only_raises_vortex_error(meta: dict[str, Any], cut: int, flip: tuple[int, int]) -> None:
    value = bytearray(NATIVE.encode_piece_content(NATIVE.PieceMetadata(**meta))[6:])
    if flip[0] < len(value):
        value[flip[0]] ^= flip[1]
    mutated = bytes(value[: len(value) - cut % (len(value) + 1)])
    native_result = comparable(lambda: NATIVE.decode_piece_content(mutated))
    assert native_result[0] in ("ok", "VortexError"), native_result
    assert native_result == comparable(lambda: TWIN.decode_piece_content(mutated))
