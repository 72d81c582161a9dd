"""Piece length and piece ranges, exactly as Dragonfly computes them (``docs/reference/protocol.md#pieces``)."""

from __future__ import annotations

MIN_PIECE_LENGTH = 4 * 1024 * 1024
MAX_PIECE_LENGTH = 64 * 1024 * 1024
# Dragonfly aims for at most this many pieces; files above ~32 GB exceed it because the length is capped.
TARGET_MAX_PIECE_COUNT = 500


def calculate_piece_length(content_length: int) -> int:
    """Return the automatic piece length: next power of two of content_length/500, clamped to [4 MiB, 64 MiB]."""
    if content_length < 0:
        raise ValueError(f"content length must be >= 0, got {content_length}")
    target = content_length // TARGET_MAX_PIECE_COUNT
    length = 1 << max(target - 1, 0).bit_length()  # next power of two, 1 for 0
    return min(max(length, MIN_PIECE_LENGTH), MAX_PIECE_LENGTH)


def piece_count(content_length: int, piece_length: int) -> int:
    """Return how many pieces cover ``content_length`` bytes (zero for an empty task)."""
    if piece_length <= 0:
        raise ValueError(f"piece length must be > 0, got {piece_length}")
    if content_length < 0:
        raise ValueError(f"content length must be >= 0, got {content_length}")
    return -(-content_length // piece_length)


def piece_range(number: int, content_length: int, piece_length: int) -> tuple[int, int]:
    """Return ``(offset, length)`` of piece ``number``; the last piece is shorter."""
    count = piece_count(content_length, piece_length)
    if not 0 <= number < count:
        raise ValueError(f"piece {number} out of range: the task has {count} pieces")
    offset = number * piece_length
    return offset, min(piece_length, content_length - offset)
