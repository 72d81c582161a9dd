"""HTTP byte ranges (RFC 9110 §14): parse a ``Range`` header, resolve it against a length, cover it with pieces.

Used by the daemon (``Download.range`` or a ``Range`` request header), dfget (``--range``, ``-H 'Range: ...'``) and
the proxy. Parsing checks syntax only; whether a range is satisfiable depends on the content length, known only
after the origin is asked, so that is a second step. Only single ranges are served: several ranges in one request
(``bytes=0-1,5-6``) are refused with a clear error rather than answered with the whole content.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from dragonfly.common.errors import DragonflyError

_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)


class InvalidRange(DragonflyError, ValueError):
    """A range is malformed (bad syntax, several ranges, last byte before the first)."""


class RangeNotSatisfiable(DragonflyError):
    """A well-formed range lies outside the content (HTTP 416); ``content_length`` is the content's length."""

    def __init__(self, spec: str, content_length: int) -> None:
        super().__init__(f"range {spec} is not satisfiable: the content is {content_length} bytes long")
        self.spec = spec
        self.content_length = content_length


@dataclass(frozen=True, slots=True)
class RangeSpec:
    """One ``bytes=`` range as written: ``first-last``, ``first-`` (to the end) or ``-suffix`` (the last bytes)."""

    first: int | None
    last: int | None

    def __str__(self) -> str:
        first = "" if self.first is None else str(self.first)
        last = "" if self.last is None else str(self.last)
        return f"bytes={first}-{last}"

    def resolve(self, content_length: int) -> ByteRange:
        """Return the bytes this spec selects in content of ``content_length`` bytes, as HTTP servers do.

        A last byte past the end is clamped to the end; a first byte at or past the end, or an empty suffix, is
        not satisfiable.
        """
        if self.first is None:
            assert self.last is not None
            if self.last == 0 or content_length == 0:
                raise RangeNotSatisfiable(str(self), content_length)
            length = min(self.last, content_length)
            return ByteRange(content_length - length, length)
        if self.first >= content_length:
            raise RangeNotSatisfiable(str(self), content_length)
        end = content_length - 1 if self.last is None else min(self.last, content_length - 1)
        return ByteRange(self.first, end - self.first + 1)


@dataclass(frozen=True, slots=True)
class ByteRange:
    """A satisfiable range: ``length`` (> 0) bytes from ``start``."""

    start: int
    length: int

    @property
    def end(self) -> int:
        """Return the offset just past the range."""
        return self.start + self.length

    def content_range(self, content_length: int) -> str:
        """Return the ``Content-Range`` header value of a 206 answer."""
        return f"bytes {self.start}-{self.end - 1}/{content_length}"

    def pieces(self, piece_length: int) -> range:
        """Return the numbers of the pieces (of ``piece_length`` bytes) that hold any byte of the range."""
        return range(self.start // piece_length, (self.end - 1) // piece_length + 1)


def parse_range_header(value: str) -> RangeSpec:
    """Parse one ``Range`` header value (``bytes=a-b``, ``bytes=a-``, ``bytes=-n``)."""
    if "," in value:
        raise InvalidRange(f"Range {value.strip()!r}: several ranges in one request are not supported")
    match = _RANGE.match(value)
    if not match or not (match.group(1) or match.group(2)):
        raise InvalidRange(f"Range {value.strip()!r}: expected bytes=FIRST-LAST, bytes=FIRST- or bytes=-SUFFIX")
    first = int(match.group(1)) if match.group(1) else None
    last = int(match.group(2)) if match.group(2) else None
    if first is not None and last is not None and last < first:
        raise InvalidRange(f"Range {value.strip()!r}: the last byte {last} is before the first byte {first}")
    return RangeSpec(first, last)


def range_from_fields(start: int, length: int) -> RangeSpec:
    """Return the spec of a ``common.v2.Range{start, length}`` message, refusing an empty one."""
    if length <= 0:
        raise InvalidRange(f"range length must be > 0, got {length}")
    if start < 0:
        raise InvalidRange(f"range start must be >= 0, got {start}")
    return RangeSpec(start, start + length - 1)


def find_range_header(header: Mapping[str, str]) -> str | None:
    """Return the value of a ``Range`` header in a header mapping (any case), or None."""
    for key, value in header.items():
        if key.lower() == "range":
            return value
    return None
