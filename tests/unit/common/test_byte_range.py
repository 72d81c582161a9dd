"""HTTP byte ranges: parsing, resolution against a length as HTTP servers do, and the pieces that cover them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dragonfly.common.byte_range import (
    ByteRange,
    InvalidRange,
    RangeNotSatisfiable,
    RangeSpec,
    find_range_header,
    parse_range_header,
    range_from_fields,
)


@pytest.mark.parametrize(
    ("header", "spec"),
    [
        ("bytes=0-99", RangeSpec(0, 99)),
        ("bytes=100-", RangeSpec(100, None)),
        ("bytes=-500", RangeSpec(None, 500)),
        (" Bytes = 5 - 5 ", RangeSpec(5, 5)),
    ],
)
def test_parse(header: str, spec: RangeSpec) -> None:
    assert parse_range_header(header) == spec


@pytest.mark.parametrize(
    ("header", "match"),
    [
        ("bytes=0-1,5-6", "several ranges"),
        ("bytes=5-4", "before the first byte"),
        ("bytes=-", "expected bytes=FIRST-LAST"),
        ("items=0-1", "expected bytes=FIRST-LAST"),
        ("bytes=a-b", "expected bytes=FIRST-LAST"),
        ("0-1", "expected bytes=FIRST-LAST"),
    ],
)
def test_parse_refuses_what_it_cannot_serve(header: str, match: str) -> None:
    with pytest.raises(InvalidRange, match=match):
        parse_range_header(header)


@pytest.mark.parametrize(
    ("spec", "length", "expected"),
    [
        (RangeSpec(0, 99), 1000, ByteRange(0, 100)),
        (RangeSpec(900, 5000), 1000, ByteRange(900, 100)),  # the last byte is clamped to the end
        (RangeSpec(10, None), 1000, ByteRange(10, 990)),
        (RangeSpec(None, 10), 1000, ByteRange(990, 10)),
        (RangeSpec(None, 5000), 1000, ByteRange(0, 1000)),
    ],
)
def test_resolve(spec: RangeSpec, length: int, expected: ByteRange) -> None:
    assert spec.resolve(length) == expected


@pytest.mark.parametrize(
    ("spec", "length"), [(RangeSpec(1000, 2000), 1000), (RangeSpec(None, 0), 1000), (RangeSpec(0, 0), 0)]
)
def test_unsatisfiable(spec: RangeSpec, length: int) -> None:
    with pytest.raises(RangeNotSatisfiable, match=f"not satisfiable: the content is {length} bytes long") as info:
        spec.resolve(length)
    assert info.value.content_length == length


def test_fields_and_headers() -> None:
    assert range_from_fields(10, 5) == RangeSpec(10, 14)
    with pytest.raises(InvalidRange, match="length must be > 0"):
        range_from_fields(10, 0)
    assert find_range_header({"accept": "x", "RANGE": "bytes=1-2"}) == "bytes=1-2"
    assert find_range_header({"accept": "x"}) is None
    assert ByteRange(5, 10).content_range(100) == "bytes 5-14/100"
    assert str(RangeSpec(None, 3)) == "bytes=-3"


@given(
    content_length=st.integers(1, 10_000),
    piece_length=st.integers(1, 3000),
    first=st.integers(0, 12_000),
    size=st.integers(1, 12_000),
)
def test_pieces_cover_exactly_the_range(content_length: int, piece_length: int, first: int, size: int) -> None:
    spec = RangeSpec(first, first + size - 1)
    if first >= content_length:
        with pytest.raises(RangeNotSatisfiable):
            spec.resolve(content_length)
        return
    byte_range = spec.resolve(content_length)
    assert byte_range.end <= content_length
    pieces = list(byte_range.pieces(piece_length))
    # Every covering piece overlaps the range, and together they contain it.
    for number in pieces:
        assert number * piece_length < byte_range.end
        assert (number + 1) * piece_length > byte_range.start
    assert pieces[0] * piece_length <= byte_range.start
    assert (pieces[-1] + 1) * piece_length >= byte_range.end
