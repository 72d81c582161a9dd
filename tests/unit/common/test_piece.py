import pytest

from dragonfly.common.piece import (
    MAX_PIECE_LENGTH,
    MIN_PIECE_LENGTH,
    calculate_piece_length,
    piece_count,
    piece_range,
)

MiB = 1024 * 1024


@pytest.mark.parametrize(
    ("content_length", "expected"),
    [
        (0, MIN_PIECE_LENGTH),
        (1, MIN_PIECE_LENGTH),
        (2000 * MiB, 4 * MiB),
        (2000 * MiB + 500 * 1024, 8 * MiB),  # floor(len/500) just above 4 MiB rounds up to 8 MiB
        (4000 * MiB, 8 * MiB),
        (8000 * MiB, 16 * MiB),
        (16000 * MiB, 32 * MiB),
        (16001 * MiB, 64 * MiB),
        (10**13, MAX_PIECE_LENGTH),
    ],
)
def test_piece_length_follows_dragonfly(content_length, expected):
    assert calculate_piece_length(content_length) == expected


def test_piece_count_and_ranges():
    assert piece_count(0, 4 * MiB) == 0
    assert piece_count(4 * MiB, 4 * MiB) == 1
    assert piece_count(4 * MiB + 1, 4 * MiB) == 2
    assert piece_range(0, 10 * MiB, 4 * MiB) == (0, 4 * MiB)
    assert piece_range(2, 10 * MiB, 4 * MiB) == (8 * MiB, 2 * MiB)


@pytest.mark.parametrize("number", [-1, 3])
def test_piece_range_out_of_range(number):
    with pytest.raises(ValueError, match="out of range"):
        piece_range(number, 10 * MiB, 4 * MiB)


def test_invalid_lengths():
    with pytest.raises(ValueError, match="piece length"):
        piece_count(10, 0)
    with pytest.raises(ValueError, match="content length"):
        calculate_piece_length(-1)
