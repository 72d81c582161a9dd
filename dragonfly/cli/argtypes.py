"""argparse ``type=`` converters shared by the clients (dfget, dfcache): each turns a bad value into an
ArgumentTypeError naming it, so the command exits 2 with one line. Modules they need are imported on use: a
client's start-up pays only for the flags it was given."""

from __future__ import annotations

import argparse


def piece_length(text: str) -> int:
    """Parse a piece length (``4MiB``..``64MiB``)."""
    from dragonfly.common.config import parse_size
    from dragonfly.common.piece import MAX_PIECE_LENGTH, MIN_PIECE_LENGTH

    try:
        value = parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not MIN_PIECE_LENGTH <= value <= MAX_PIECE_LENGTH:
        raise argparse.ArgumentTypeError(f"{text!r}: piece length must be between 4MiB and 64MiB")
    return value


def positive_duration(text: str, what: str = "the timeout") -> float:
    """Parse a positive duration (``30s``, ``2h``) in seconds."""
    from dragonfly.common.config import parse_duration

    try:
        value = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: {what} must be positive")
    return value


# A year is more than any download needs, and far below what a socket timeout (~292 years) or a protobuf
# Duration holds: past those the clients failed with an OverflowError instead of a usage error.
MAX_TIMEOUT = 365 * 86400.0


def timeout(text: str) -> float:
    """Parse a ``--timeout`` (at most ``MAX_TIMEOUT``)."""
    value = positive_duration(text)
    if value > MAX_TIMEOUT:
        raise argparse.ArgumentTypeError(f"{text!r}: the timeout must be at most 365d")
    return value


_HEX_DIGITS = frozenset("0123456789abcdef")


def task_id(text: str) -> str:
    """Accept a task id (64 lower-case hex digits).

    The check of dragonfly.common.ids.is_task_id, written here: that module imports hashlib, uuid and platform,
    a few ms of every start of dfcache, which needs none of them.
    """
    if len(text) != 64 or not _HEX_DIGITS.issuperset(text):
        raise argparse.ArgumentTypeError(f"{text!r}: a task id is 64 lower-case hex digits")
    return text
