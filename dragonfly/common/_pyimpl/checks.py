"""Argument checks of the piece I/O twin, worded and ordered as ``ext/piece_io/src/python/`` words and orders them."""

from __future__ import annotations

import math
import operator
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from typing_extensions import Buffer

I64_MIN: Final = -(2**63)
I64_MAX: Final = 2**63 - 1
# The formats pyo3's PyBuffer<u8> accepts on a little-endian machine.
_U8_FORMATS: Final = frozenset({"B", "c", "@B", "@c", "=B", "=c", "<B", "<c"})


def i64(value: int) -> int:
    value = operator.index(value)
    if not I64_MIN <= value <= I64_MAX:
        raise OverflowError("Python int too large to convert to C long")
    return value


def non_negative(name: str, value: int) -> int:
    value = i64(value)
    if value < 0:
        raise ValueError(f"{name} must be non-negative, got {value}")
    return value


def timeout_arg(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    if not (math.isfinite(value) and value >= 0):
        raise ValueError("timeout must be None or a finite number >= 0")
    return value


def u8_view(obj: Buffer) -> memoryview:
    view = memoryview(obj)
    if view.itemsize != 1 or view.format not in _U8_FORMATS:
        view.release()
        raise BufferError("buffer contents are not compatible with u8")
    return view


def contiguous(view: memoryview) -> memoryview:
    if not view.c_contiguous:
        view.release()
        raise BufferError("buffer must be C-contiguous")
    return view.cast("B") if view.format != "B" or view.ndim != 1 else view


def writable(view: memoryview) -> memoryview:
    if view.readonly:
        view.release()
        raise TypeError("buffer must be writable")
    return contiguous(view)


def bytes_of(obj: Buffer) -> bytes:
    if isinstance(obj, bytes):
        return obj
    with u8_view(obj) as raw, contiguous(raw) as view:
        return view.tobytes()
