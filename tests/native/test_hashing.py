"""_dragonfly_hashing against its pure-Python twin: same results, same exceptions, and the GIL released."""

from __future__ import annotations

import array
import errno
import functools
import hashlib
import itertools
import mmap
import os
import pathlib
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dragonfly.common import native
from tests.waiting import wait_for

IMPLS = native.implementations("hashing")
NATIVE = IMPLS["native"]
TWIN = IMPLS["python"]
ALGORITHMS = ("crc32", "crc32c", "sha256", "sha512", "blake3")
# The twin's CRC-32C and BLAKE3 run at a few MB/s; keep their inputs small.
SLOW_IN_TWIN = ("crc32c", "blake3")

KNOWN = {
    "crc32": (b"123456789", "cbf43926"),
    "crc32c": (b"123456789", "e3069283"),
    "sha256": (b"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
    "sha512": (
        b"abc",
        "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a"
        "2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
    ),
    "blake3": (b"", "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"),
}

DIFF_SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(params=["native", "python"])
def impl(request: pytest.FixtureRequest) -> ModuleType:
    return IMPLS[request.param]


def outcome(call: Callable[[], Any]) -> tuple[str, Any]:
    """Return what a call did, comparable across implementations: its value or its exception and message."""
    try:
        return ("ok", call())
    except Exception as exc:
        return (type(exc).__name__, str(exc))


def test_module_metadata() -> None:
    assert NATIVE.__version__ == native.NATIVE_VERSION
    assert NATIVE.BUILD_PROFILE in ("debug", "release")
    assert TWIN.BUILD_PROFILE == "python"
    assert NATIVE.ALGORITHMS == TWIN.ALGORITHMS == ALGORITHMS


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_known_vectors(impl: ModuleType, algorithm: str) -> None:
    data, hexdigest = KNOWN[algorithm]
    hasher = impl.Hasher(algorithm, data)
    assert hasher.hexdigest() == hexdigest
    assert hasher.digest() == bytes.fromhex(hexdigest)
    assert hasher.name == algorithm
    assert hasher.digest_size == len(hasher.digest())
    if algorithm.startswith("crc"):
        assert getattr(impl, algorithm)(data) == int(hexdigest, 16)


def test_blake3_across_chunk_and_tree_boundaries() -> None:
    # Lengths from the official BLAKE3 test vectors: each one crosses a block, chunk or subtree boundary.
    for length in (1, 63, 64, 65, 1023, 1024, 1025, 2048, 2049, 3072, 3073, 4096, 4097, 8193, 16384, 31744):
        data = bytes(i % 251 for i in range(length))
        assert TWIN.Hasher("blake3", data).digest() == NATIVE.Hasher("blake3", data).digest(), length


@DIFF_SETTINGS
@given(data=st.binary(max_size=20_000), value=st.integers(0, 2**32 - 1))
def test_crc32_matches_zlib(data: bytes, value: int) -> None:
    assert NATIVE.crc32(data, value) == TWIN.crc32(data, value) == zlib.crc32(data, value)


@DIFF_SETTINGS
@given(data=st.binary(max_size=8_000), value=st.integers(0, 2**32 - 1), split=st.integers(0, 8_000))
def test_crc32c_matches_twin_and_continues(data: bytes, value: int, split: int) -> None:
    expected = TWIN.crc32c(data, value)
    assert NATIVE.crc32c(data, value) == expected
    head, tail = data[:split], data[split:]
    assert NATIVE.crc32c(tail, NATIVE.crc32c(head, value)) == expected


@st.composite
def chunked(draw: st.DrawFn, max_size: int) -> list[bytes]:
    data = draw(st.binary(max_size=max_size))
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=8)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@DIFF_SETTINGS
@given(algorithm=st.sampled_from(ALGORITHMS), chunks=chunked(6_000), peek_at=st.integers(0, 8))
def test_streaming_matches_twin_and_one_shot(algorithm: str, chunks: list[bytes], peek_at: int) -> None:
    hashers = {name: impl.Hasher(algorithm) for name, impl in IMPLS.items()}
    for index, chunk in enumerate(chunks):
        for hasher in hashers.values():
            hasher.update(chunk)
        if index == peek_at:
            # digest() mid-stream must not end or disturb the stream.
            assert hashers["native"].digest() == hashers["python"].digest()
    whole = b"".join(chunks)
    expected = NATIVE.Hasher(algorithm, whole).digest()
    assert hashers["native"].digest() == hashers["python"].digest() == expected
    if algorithm in ("sha256", "sha512"):
        assert expected == hashlib.new(algorithm, whole).digest()


@DIFF_SETTINGS
@given(algorithm=st.sampled_from(ALGORITHMS), head=st.binary(max_size=3_000), tails=st.tuples(st.binary(), st.binary()))
def test_copy_is_independent(algorithm: str, head: bytes, tails: tuple[bytes, bytes]) -> None:
    for impl in IMPLS.values():
        original = impl.Hasher(algorithm, head)
        clone = original.copy()
        original.update(tails[0])
        clone.update(tails[1])
        assert original.digest() == impl.Hasher(algorithm, head + tails[0]).digest()
        assert clone.digest() == impl.Hasher(algorithm, head + tails[1]).digest()
        assert clone.name == algorithm


# A file that spans the 1 MiB read buffer and ends mid-buffer.
FILE_SIZE = (1 << 20) + 4097


@pytest.fixture(scope="module")
def content_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[pathlib.Path, bytes, int]]:
    content = os.urandom(FILE_SIZE)
    path = tmp_path_factory.mktemp("hashing") / "content"
    path.write_bytes(content)
    fd = os.open(path, os.O_RDONLY)
    yield path, content, fd
    os.close(fd)


@st.composite
def file_ranges(draw: st.DrawFn) -> tuple[str, int, int | None]:
    algorithm = draw(st.sampled_from(ALGORITHMS))
    slow = algorithm in SLOW_IN_TWIN
    length = draw(st.none() | st.integers(0, 50_000 if slow else FILE_SIZE + 10))
    low = FILE_SIZE - 50_000 if slow and length is None else 0
    offset = draw(st.integers(low, FILE_SIZE + 10))
    return algorithm, offset, length


@DIFF_SETTINGS
@given(request=file_ranges())
def test_file_digest_matches_twin(
    content_file: tuple[pathlib.Path, bytes, int], request: tuple[str, int, int | None]
) -> None:
    path, content, fd = content_file
    algorithm, offset, length = request
    by_fd = outcome(lambda: NATIVE.file_digest(algorithm, fd, offset, length))
    assert by_fd == outcome(lambda: TWIN.file_digest(algorithm, fd, offset, length))
    assert by_fd == outcome(lambda: NATIVE.file_digest(algorithm, str(path), offset=offset, length=length))
    end = FILE_SIZE if length is None else offset + length
    if max(offset, end) <= FILE_SIZE:
        assert by_fd == ("ok", NATIVE.Hasher(algorithm, content[offset:end]).digest())
    else:
        assert by_fd == (
            "EOFError",
            f"file ends at byte {FILE_SIZE}, before the end of the requested range at byte {max(offset, end)}",
        )


def test_file_digest_by_fd_and_path(impl: ModuleType, content_file: tuple[pathlib.Path, bytes, int]) -> None:
    path, content, fd = content_file
    expected = hashlib.sha256(content).digest()
    position = os.lseek(fd, 1234, os.SEEK_SET)
    assert impl.file_digest("sha256", fd) == expected
    assert impl.file_digest("sha256", path) == expected
    assert impl.file_digest("sha256", str(path)) == expected
    assert impl.file_digest("crc32", fd, 10, 100) == zlib.crc32(content[10:110]).to_bytes(4, "big")
    assert impl.file_digest("sha512", path, offset=FILE_SIZE) == hashlib.sha512(b"").digest()
    # Positional reads only: the shared fd's offset is untouched.
    assert os.lseek(fd, 0, os.SEEK_CUR) == position


@pytest.mark.parametrize(
    "data",
    [bytearray(b"piece bytes"), memoryview(b"xxpiece bytesxx")[2:-2], array.array("I", [1, 2, 3]), b""],
    ids=["bytearray", "memoryview-slice", "array-of-uint32", "empty"],
)
def test_accepts_any_contiguous_buffer(impl: ModuleType, data: Any) -> None:
    raw = bytes(memoryview(data).cast("B"))
    assert impl.crc32(data) == zlib.crc32(raw)
    assert impl.Hasher("sha256", data).digest() == hashlib.sha256(raw).digest()


def test_accepts_mmap(impl: ModuleType) -> None:
    with mmap.mmap(-1, 4096) as region:
        region[:5] = b"piece"
        assert impl.crc32(region) == zlib.crc32(bytes(region))
        assert impl.crc32c(region) == NATIVE.crc32c(bytes(region))


NON_CONTIGUOUS = memoryview(b"abcdefgh")[::2]


@pytest.mark.parametrize(
    "call",
    [
        lambda impl: impl.crc32(NON_CONTIGUOUS),
        lambda impl: impl.crc32c(NON_CONTIGUOUS),
        lambda impl: impl.Hasher("blake3").update(NON_CONTIGUOUS),
        lambda impl: impl.Hasher("sha256", NON_CONTIGUOUS),
    ],
    ids=["crc32", "crc32c", "update", "constructor"],
)
def test_non_contiguous_buffer_is_a_buffer_error(impl: ModuleType, call: Callable[[ModuleType], Any]) -> None:
    with pytest.raises(BufferError, match=r"^memoryview: underlying buffer is not C-contiguous$"):
        call(impl)


@pytest.mark.parametrize(
    "call",
    [
        lambda impl: impl.crc32("piece"),
        lambda impl: impl.crc32c("piece"),
        lambda impl: impl.Hasher("sha512").update("piece"),
        lambda impl: impl.Hasher("crc32", "piece"),
    ],
    ids=["crc32", "crc32c", "update", "constructor"],
)
def test_str_is_a_type_error(impl: ModuleType, call: Callable[[ModuleType], Any]) -> None:
    with pytest.raises(TypeError, match=r"^a bytes-like object is required, not 'str'$"):
        call(impl)


@pytest.mark.parametrize("value", [-1, 2**32])
def test_crc_value_out_of_range_is_an_overflow_error(impl: ModuleType, value: int) -> None:
    with pytest.raises(OverflowError):
        impl.crc32(b"x", value)
    with pytest.raises(OverflowError):
        impl.crc32c(b"x", value)


def test_unknown_algorithm_is_a_value_error(impl: ModuleType) -> None:
    message = "^unknown hash algorithm 'md5', expected one of: crc32, crc32c, sha256, sha512, blake3$"
    with pytest.raises(ValueError, match=message):
        impl.Hasher("md5")
    with pytest.raises(ValueError, match=message):
        impl.file_digest("md5", "/nonexistent")


def test_closed_fd_is_ebadf(impl: ModuleType, tmp_path: pathlib.Path) -> None:
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    os.close(fd)
    for length in (None, 0):
        with pytest.raises(OSError, match="Bad file descriptor") as excinfo:
            impl.file_digest("sha256", fd, 0, length)
        assert excinfo.value.errno == errno.EBADF
        assert str(excinfo.value) == "[Errno 9] Bad file descriptor"


def test_missing_path_is_file_not_found(impl: ModuleType, tmp_path: pathlib.Path) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(FileNotFoundError) as excinfo:
        impl.file_digest("crc32", missing)
    assert excinfo.value.errno == errno.ENOENT
    assert excinfo.value.filename == str(missing)
    assert str(excinfo.value) == f"[Errno 2] No such file or directory: '{missing}'"


@pytest.mark.parametrize(("offset", "length", "name"), [(-1, None, "offset"), (0, -5, "length")])
def test_negative_offset_or_length_is_a_value_error(
    impl: ModuleType, content_file: tuple[pathlib.Path, bytes, int], offset: int, length: int | None, name: str
) -> None:
    path, _, fd = content_file
    bad = offset if name == "offset" else length
    for file in (fd, path):
        with pytest.raises(ValueError, match=f"^{name} must be >= 0, got {bad}$"):
            impl.file_digest("sha256", file, offset, length)


def test_range_past_eof_is_an_eof_error(impl: ModuleType, content_file: tuple[pathlib.Path, bytes, int]) -> None:
    _, _, fd = content_file
    with pytest.raises(EOFError, match=f"^file ends at byte {FILE_SIZE}, .* at byte {FILE_SIZE + 1}$"):
        impl.file_digest("crc32", fd, FILE_SIZE - 10, 11)
    with pytest.raises(EOFError, match=f"^file ends at byte {FILE_SIZE}, .* at byte {FILE_SIZE + 5}$"):
        impl.file_digest("crc32", fd, FILE_SIZE + 5)


@pytest.mark.parametrize("file", [b"/etc/hostname", 1.5, None])
def test_file_must_be_fd_or_str_path(impl: ModuleType, file: Any) -> None:
    name = type(file).__name__
    with pytest.raises(TypeError, match=f"^file must be an int fd or a str or os.PathLike path, not {name}$"):
        impl.file_digest("sha256", file)


def test_hasher_is_shared_safely_between_threads(impl: ModuleType) -> None:
    # Updates from several threads are serialised: CRC-32 of the concatenation is order-independent here
    # because every thread feeds identical chunks.
    chunk = os.urandom(4096 if impl is NATIVE else 512)
    hasher = impl.Hasher("crc32")
    threads = [threading.Thread(target=lambda: [hasher.update(chunk) for _ in range(50)]) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert hasher.digest() == NATIVE.Hasher("crc32", chunk * 200).digest()


# GIL release: a second thread must run while one long native call is in progress.
LONG_INPUT = 256 << 20


def runs_while(call: Callable[[], object]) -> int:
    """Return how many times another Python thread ran strictly inside ``call``."""
    ticks: list[float] = []
    done = threading.Event()

    def tick() -> None:
        while not done.is_set():
            ticks.append(time.perf_counter())
            # Sleeping gives the GIL away, so each tick needs the GIL back: none can land inside a call that holds it.
            time.sleep(0.001)

    ticker = threading.Thread(target=tick)
    ticker.start()
    try:
        wait_for(lambda: ticks, 10, "the ticker thread to run", interval=0.001)
        started = time.perf_counter()
        call()
        finished = time.perf_counter()
    finally:
        done.set()
        ticker.join(timeout=10)
    return sum(started < t < finished for t in ticks)


@pytest.fixture(scope="module")
def long_buffer() -> Iterator[mmap.mmap]:
    # Anonymous zero pages: 256 MiB to hash without 256 MiB of resident memory.
    with mmap.mmap(-1, LONG_INPUT) as region:
        yield region


@pytest.fixture(scope="module")
def long_file(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    path = tmp_path_factory.mktemp("gil") / "sparse"
    with open(path, "wb") as file:
        file.truncate(LONG_INPUT)
    return path


@pytest.mark.parametrize(
    "make_call",
    [
        lambda buf, path: functools.partial(NATIVE.Hasher("sha256").update, buf),
        lambda buf, path: functools.partial(NATIVE.Hasher, "sha512", buf),
        lambda buf, path: functools.partial(NATIVE.crc32, buf),
        lambda buf, path: functools.partial(NATIVE.file_digest, "sha256", path),
    ],
    ids=["update", "constructor", "crc32", "file_digest"],
)
def test_native_calls_release_the_gil(
    long_buffer: mmap.mmap, long_file: pathlib.Path, make_call: Callable[..., Callable[[], object]]
) -> None:
    # Even a call that holds the GIL can let a tick in just before or after it; three cannot.
    assert runs_while(make_call(long_buffer, long_file)) >= 3
