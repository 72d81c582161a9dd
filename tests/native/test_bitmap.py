"""The Cython piece bitmap (``dragonfly._bitmap``) against its pure-Python twin, plus the contract both keep."""

from __future__ import annotations

import operator
import re
import sys
import threading
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dragonfly.common import native
from dragonfly.common.errors import NativeExtensionError


def _load_implementations() -> dict[str, ModuleType]:
    try:
        return native.implementations("bitmap")
    except NativeExtensionError:
        # Only the DRAGONFLY_NO_EXTENSIONS=1 lane may run without the compiled module; there the twin is still checked.
        if native.USING_EXTENSIONS:
            raise
        from dragonfly.common._pyimpl import bitmap

        return {"python": bitmap}


IMPLS = _load_implementations()
needs_native = pytest.mark.skipif("native" not in IMPLS, reason="dragonfly._bitmap is not built")


@pytest.fixture(params=sorted(IMPLS))
def impl(request: pytest.FixtureRequest) -> ModuleType:
    return IMPLS[request.param]


def outcome(call: Callable[..., Any], *args: Any) -> tuple[Any, ...]:
    """Return what a call produced, as a value both implementations can be compared on."""
    try:
        return ("returned", call(*args))
    except Exception as exc:
        return ("raised", type(exc), str(exc))


def snapshot(bitmap: Any) -> dict[str, Any]:
    """Return every read-only view of a bitmap."""
    return {
        "size": bitmap.size,
        "len": len(bitmap),
        "count": bitmap.count(),
        "first_missing": bitmap.first_missing(),
        "missing": list(bitmap.iter_missing()),
        "bytes": bitmap.to_bytes(),
        "repr": repr(bitmap),
        "is_full": bitmap.is_full(),
        "present": [piece for piece in range(bitmap.size) if bitmap.test(piece)],
    }


# The layout is a storage and wire format: piece i is bit i % 8 (LSB first) of byte i // 8.
@pytest.mark.parametrize(
    ("size", "pieces", "expected"),
    [
        (0, [], b""),
        (1, [0], b"\x01"),
        (8, [7], b"\x80"),
        (9, [0, 8], b"\x01\x01"),
        (10, [1, 9], b"\x02\x02"),
        (16, [3, 12, 15], b"\x08\x90"),
        (64, [63], b"\x00" * 7 + b"\x80"),
        (65, [64], b"\x00" * 8 + b"\x01"),
        (130, [0, 64, 129], b"\x01" + b"\x00" * 7 + b"\x01" + b"\x00" * 7 + b"\x02"),
    ],
)
def test_byte_layout_is_lsb_first(impl: ModuleType, size: int, pieces: list[int], expected: bytes) -> None:
    bitmap = impl.PieceBitmap(size)
    for piece in pieces:
        bitmap.set(piece)
    assert bitmap.to_bytes() == expected
    assert impl.PieceBitmap.from_bytes(size, expected) == bitmap


def test_basic_operations(impl: ModuleType) -> None:
    bitmap = impl.PieceBitmap(13)
    assert (bitmap.size, len(bitmap), bitmap.count(), bitmap.first_missing()) == (13, 13, 0, 0)
    for piece in (0, 1, 5, 12):
        bitmap.set(piece)
    bitmap.set(5)
    bitmap.clear(1)
    bitmap.clear(2)
    assert bitmap.test(0) is True
    assert bitmap.test(1) is False
    assert bitmap.count() == 3
    assert bitmap.first_missing() == 1
    assert list(bitmap.iter_missing()) == [1, 2, 3, 4, 6, 7, 8, 9, 10, 11]
    assert repr(bitmap) == "PieceBitmap(size=13, count=3)"
    assert not bitmap.is_full()
    bitmap.set_all()
    assert bitmap.to_bytes() == b"\xff\x1f"
    assert (bitmap.count(), bitmap.first_missing(), bitmap.is_full()) == (13, -1, True)
    assert list(bitmap.iter_missing()) == []


def test_empty_bitmap(impl: ModuleType) -> None:
    bitmap = impl.PieceBitmap(0)
    assert (bitmap.count(), bitmap.first_missing(), bitmap.is_full(), bitmap.to_bytes()) == (0, -1, True, b"")
    assert list(bitmap.iter_missing()) == []
    assert bitmap.missing_from(impl.PieceBitmap(0)) == []
    assert impl.rarest_first(bitmap, [impl.PieceBitmap(0)]) == []


def test_equality_and_hash(impl: ModuleType) -> None:
    a, b = impl.PieceBitmap(20), impl.PieceBitmap(20)
    assert a == b
    a.set(19)
    assert a != b
    b.set(19)
    assert a == b
    assert impl.PieceBitmap(8) != impl.PieceBitmap(7)
    assert a != a.to_bytes()
    with pytest.raises(TypeError, match="unhashable"):
        hash(a)


@pytest.mark.parametrize("piece", [-1, 10, 11, 2**63, 2**70, -(2**70)])
@pytest.mark.parametrize("method", ["set", "clear", "test"])
def test_out_of_range_piece(impl: ModuleType, method: str, piece: int) -> None:
    bitmap = impl.PieceBitmap(10)
    with pytest.raises(IndexError) as info:
        getattr(bitmap, method)(piece)
    assert str(info.value) == f"piece {piece} out of range for a bitmap of 10 pieces"


@pytest.mark.parametrize("piece", [1.0, "1", None])
def test_piece_must_be_an_integer(impl: ModuleType, piece: object) -> None:
    with pytest.raises(TypeError, match="cannot be interpreted as an integer"):
        impl.PieceBitmap(10).set(piece)


@pytest.mark.parametrize("size", [-1, 2**32 + 1, 2**70, -(2**70)])
def test_size_out_of_range(impl: ModuleType, size: int) -> None:
    with pytest.raises(ValueError, match=rf"^bitmap size must be between 0 and 4294967296, got {size}$"):
        impl.PieceBitmap(size)


@pytest.mark.parametrize(
    ("size", "data", "message"),
    [
        (16, b"\x00", "bitmap of 16 pieces needs 2 bytes, got 1"),
        (12, b"\x00\x0f\x00", "bitmap of 12 pieces needs 2 bytes, got 3"),
        (0, b"\x00", "bitmap of 0 pieces needs 0 bytes, got 1"),
        (12, b"\x00\x10", "bitmap padding bits must be zero"),
        (1, b"\x02", "bitmap padding bits must be zero"),
        (15, b"\xff\xff", "bitmap padding bits must be zero"),
    ],
)
def test_from_bytes_rejects_bad_data(impl: ModuleType, size: int, data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=rf"^{re.escape(message)}$"):
        impl.PieceBitmap.from_bytes(size, data)


def test_from_bytes_buffer_contract(impl: ModuleType) -> None:
    for data in (b"\x01\x02", bytearray(b"\x01\x02"), memoryview(b"\x00\x01\x02")[1:]):
        assert impl.PieceBitmap.from_bytes(16, data).to_bytes() == b"\x01\x02"
    with pytest.raises(BufferError, match="not C-contiguous"):
        impl.PieceBitmap.from_bytes(16, memoryview(b"\x01\x00\x02\x00")[::2])
    for data in ("ab", None, 7):
        with pytest.raises(TypeError):
            impl.PieceBitmap.from_bytes(16, data)
    # The bitmap owns its bits: changing the source buffer afterwards changes nothing.
    source = bytearray(b"\x01\x02")
    bitmap = impl.PieceBitmap.from_bytes(16, source)
    source[0] = 0xFF
    assert bitmap.to_bytes() == b"\x01\x02"


def test_missing_from_and_rarest_first(impl: ModuleType) -> None:
    want = impl.PieceBitmap.from_bytes(10, b"\x05\x00")  # has 0, 2
    a = impl.PieceBitmap.from_bytes(10, b"\x0f\x02")  # 0 1 2 3 9
    b = impl.PieceBitmap.from_bytes(10, b"\x3a\x00")  # 1 3 4 5
    c = impl.PieceBitmap.from_bytes(10, b"\x08\x02")  # 3 9
    assert want.missing_from(a) == [1, 3, 9]
    assert want.missing_from(want) == []
    assert want.present() == [0, 2]
    assert a.present() == [0, 1, 2, 3, 9]
    assert impl.PieceBitmap(0).present() == []
    # holders: 1 -> 2, 3 -> 3, 4 -> 1, 5 -> 1, 9 -> 2
    assert impl.rarest_first(want, [a, b, c]) == [4, 5, 1, 9, 3]
    assert impl.rarest_first(want, iter([a, b, c])) == [4, 5, 1, 9, 3]
    assert impl.rarest_first(want, []) == []


def test_size_and_type_mismatches(impl: ModuleType) -> None:
    want, other = impl.PieceBitmap(10), impl.PieceBitmap(11)
    with pytest.raises(ValueError, match=r"^bitmap sizes differ: 10 != 11$"):
        want.missing_from(other)
    with pytest.raises(ValueError, match=r"^bitmap sizes differ: 10 != 11$"):
        impl.rarest_first(want, [impl.PieceBitmap(10), other])
    with pytest.raises(TypeError, match=r"^expected a PieceBitmap, got bytes$"):
        want.missing_from(b"\x00\x00")
    with pytest.raises(TypeError, match=r"^expected a PieceBitmap, got NoneType$"):
        impl.rarest_first(want, [None])
    with pytest.raises(TypeError, match=r"^expected a PieceBitmap, got int$"):
        impl.rarest_first(3, [want])
    with pytest.raises(TypeError, match="not iterable"):
        impl.rarest_first(want, 3)


@needs_native
def test_implementations_do_not_mix() -> None:
    for mine, theirs in (("native", "python"), ("python", "native")):
        with pytest.raises(TypeError, match=r"^expected a PieceBitmap, got PieceBitmap$"):
            IMPLS[mine].PieceBitmap(4).missing_from(IMPLS[theirs].PieceBitmap(4))


@needs_native
def test_build_attributes() -> None:
    assert IMPLS["native"].__version__ == IMPLS["python"].__version__ == native.NATIVE_VERSION
    assert IMPLS["native"].BUILD_PROFILE in ("release", "debug")
    assert IMPLS["native"].MAX_SIZE == IMPLS["python"].MAX_SIZE == 2**32


@st.composite
def bitmap_bytes(draw: st.DrawFn, size: int) -> bytes:
    """Draw a valid ``to_bytes`` image: empty, full, sparse or random."""
    nbytes = (size + 7) // 8
    kind = draw(st.sampled_from(["empty", "full", "sparse", "random"]))
    if kind == "empty":
        data = bytearray(nbytes)
    elif kind == "full":
        data = bytearray(b"\xff" * nbytes)
    elif kind == "sparse":
        data = bytearray(nbytes)
        for piece in draw(st.lists(st.integers(0, max(size - 1, 0)), max_size=20)) if size else []:
            data[piece // 8] |= 1 << (piece % 8)
    else:
        data = bytearray(draw(st.binary(min_size=nbytes, max_size=nbytes)))
    if size % 8:
        data[-1] &= (1 << (size % 8)) - 1
    return bytes(data)


OPS = st.sampled_from(["set", "clear", "test"])


@needs_native
@settings(max_examples=150, deadline=None)
@given(data=st.data(), size=st.integers(0, 5000))
def test_differential_mutations(data: st.DataObject, size: int) -> None:
    image = data.draw(bitmap_bytes(size))
    native_map = IMPLS["native"].PieceBitmap.from_bytes(size, image)
    python_map = IMPLS["python"].PieceBitmap.from_bytes(size, image)
    assert snapshot(native_map) == snapshot(python_map)
    ops = data.draw(st.lists(st.tuples(OPS, st.integers(-3, size + 3)), max_size=60))
    for op, piece in ops:
        assert outcome(getattr(native_map, op), piece) == outcome(getattr(python_map, op), piece)
    assert snapshot(native_map) == snapshot(python_map)
    assert native_map.to_bytes() == python_map.to_bytes()
    again = IMPLS["native"].PieceBitmap.from_bytes(size, native_map.to_bytes())
    assert again == native_map
    assert snapshot(again) == snapshot(native_map)
    if data.draw(st.booleans()):
        native_map.set_all()
        python_map.set_all()
        assert snapshot(native_map) == snapshot(python_map)


@needs_native
@settings(max_examples=100, deadline=None)
@given(data=st.data(), size=st.integers(0, 5000), nparents=st.integers(0, 8))
def test_differential_parents(data: st.DataObject, size: int, nparents: int) -> None:
    want_image = data.draw(bitmap_bytes(size))
    parent_images = [data.draw(bitmap_bytes(size)) for _ in range(nparents)]
    results = {}
    for name, impl in IMPLS.items():
        want = impl.PieceBitmap.from_bytes(size, want_image)
        parents = [impl.PieceBitmap.from_bytes(size, image) for image in parent_images]
        results[name] = (
            [outcome(want.missing_from, parent) for parent in parents],
            outcome(impl.rarest_first, want, parents),
            [outcome(operator.eq, want, parent) for parent in parents],
            [parent.present() for parent in parents],
        )
    assert results["native"] == results["python"]
    missing, order, _, present = results["python"]
    assert present == [[n for n in range(size) if parent.test(n)] for parent in parents]
    # The oracle itself: every listed piece is wanted and held somewhere, each once, holders never decreasing.
    held = {piece for result in missing for piece in result[1]}
    assert sorted(order[1]) == sorted(held)
    holders = [sum(piece in result[1] for result in missing) for piece in order[1]]
    assert [(h, p) for h, p in zip(holders, order[1], strict=True)] == sorted(zip(holders, order[1], strict=True))


@needs_native
@settings(max_examples=100, deadline=None)
@given(data=st.data(), size=st.integers(0, 300))
def test_differential_iteration_while_mutating(data: st.DataObject, size: int) -> None:
    """Each ``next()`` returns the lowest missing piece after the previous one, as the bitmap is at that moment."""
    image = data.draw(bitmap_bytes(size))
    maps = {name: impl.PieceBitmap.from_bytes(size, image) for name, impl in IMPLS.items()}
    iterators = {name: bitmap.iter_missing() for name, bitmap in maps.items()}
    steps = data.draw(st.lists(st.tuples(st.sampled_from(["next", "set", "clear"]), st.integers(0, size)), max_size=80))
    for op, piece in steps:
        if op == "next":
            seen = {name: outcome(next, it) for name, it in iterators.items()}
        else:
            seen = {name: outcome(getattr(bitmap, op), piece) for name, bitmap in maps.items()}
        assert seen["native"] == seen["python"]


@needs_native
@pytest.mark.parametrize("nparents", [1, 4, 17])
def test_large_bitmaps_match(nparents: int) -> None:
    # 2**18 pieces is 4096 words: with four or more parents rarest_first releases the GIL.
    size = 2**18 + 5
    results = []
    for impl in (IMPLS["native"], IMPLS["python"]):
        want = impl.PieceBitmap(size)
        parents = [impl.PieceBitmap(size) for _ in range(nparents)]
        for n, parent in enumerate(parents):
            for piece in range(n, size, 997 + n):
                parent.set(piece)
        for piece in range(0, size, 3):
            want.set(piece)
        results.append((impl.rarest_first(want, parents), want.missing_from(parents[-1]), want.first_missing()))
    assert results[0] == results[1]


@needs_native
def test_rarest_first_releases_the_gil() -> None:
    """Another thread runs while a large rarest_first call does its counting."""
    bitmap = IMPLS["native"].PieceBitmap
    want, parent = bitmap(2**22), bitmap.from_bytes(2**22, b"\x01" * 2**19)
    parents = [parent] * 64
    stamps: list[float] = []
    stop = threading.Event()

    def spin() -> None:
        last = 0.0
        while not stop.is_set():
            now = time.perf_counter()
            if now - last > 0.001:
                stamps.append(now)
                last = now

    interval = sys.getswitchinterval()
    sys.setswitchinterval(0.001)
    thread = threading.Thread(target=spin)
    thread.start()
    try:
        for _ in range(5):
            start = time.perf_counter()
            result = IMPLS["native"].rarest_first(want, parents)
            end = time.perf_counter()
            # Margins cover the switch interval before the call and after it returns.
            if any(start + 0.01 < stamp < end - 0.01 for stamp in list(stamps)):
                break
        else:
            pytest.fail(f"no other thread ran during {end - start:.3f} s of rarest_first")
    finally:
        stop.set()
        thread.join(timeout=10)
        sys.setswitchinterval(interval)
    assert not thread.is_alive()
    assert len(result) == 2**19
    assert result[:3] == [0, 8, 16]
