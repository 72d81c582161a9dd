"""Piece-bitmap operations on 10,000 pieces: the Cython module against its pure-Python twin (target >= 20x).

Each operation is one benchmark group with a ``native`` and a ``python`` row; the ratio is python mean / native
mean. Run: ``.venv/bin/python -m pytest bench/micro/test_bench_bitmap.py --benchmark-enable -q``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest

from dragonfly.common import native

PIECES = 10_000
PARENTS = 8
IMPLS = native.implementations("bitmap")


def random_image(rng: random.Random, density: float) -> bytes:
    """Return a ``to_bytes`` image with each piece present with probability ``density``."""
    image = bytearray((PIECES + 7) // 8)
    for piece in range(PIECES):
        if rng.random() < density:
            image[piece // 8] |= 1 << (piece % 8)
    return bytes(image)


RNG = random.Random(2024)
# A peer a third of the way through, parents about half-way: the shape of a swarm in full flow.
WANT = random_image(RNG, 0.3)
PARENT_IMAGES = [random_image(RNG, 0.5) for _ in range(PARENTS)]
# Nearly complete, first gap three quarters in: first_missing has to scan most of the map.
ALMOST_FULL = bytearray(b"\xff" * (PIECES // 8))
ALMOST_FULL[7_500 // 8] &= ~(1 << (7_500 % 8)) & 0xFF


def operations(impl: ModuleType) -> dict[str, Callable[[], Any]]:
    want = impl.PieceBitmap.from_bytes(PIECES, WANT)
    parents = [impl.PieceBitmap.from_bytes(PIECES, image) for image in PARENT_IMAGES]
    almost_full = impl.PieceBitmap.from_bytes(PIECES, bytes(ALMOST_FULL))
    return {
        "count": want.count,
        "first_missing": almost_full.first_missing,
        "iter_missing": lambda: list(want.iter_missing()),
        "missing_from": lambda: want.missing_from(parents[0]),
        "rarest_first_8_parents": lambda: impl.rarest_first(want, parents),
        "to_bytes": want.to_bytes,
        "from_bytes": lambda: impl.PieceBitmap.from_bytes(PIECES, WANT),
    }


OPERATIONS = list(operations(IMPLS["python"]))


@pytest.mark.parametrize("impl_name", ["native", "python"])
@pytest.mark.parametrize("operation", OPERATIONS)
def test_bitmap(benchmark: Any, operation: str, impl_name: str) -> None:
    ops = {name: operations(impl) for name, impl in IMPLS.items()}
    # Both implementations must agree on what is being timed.
    expected = ops["python"][operation]()
    benchmark.group = f"bitmap {operation}"
    result = benchmark(ops[impl_name][operation])
    if operation == "from_bytes":
        assert result.to_bytes() == expected.to_bytes()
    else:
        assert result == expected
