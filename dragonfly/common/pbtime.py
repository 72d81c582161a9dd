"""Seconds to and from ``google.protobuf`` Timestamp and Duration messages (every part builds them)."""

from __future__ import annotations

from google.protobuf import duration_pb2, timestamp_pb2


def timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    """Return a Timestamp for a wall-clock time."""
    whole = int(seconds)
    return timestamp_pb2.Timestamp(seconds=whole, nanos=int((seconds - whole) * 1e9))


def duration(seconds: float) -> duration_pb2.Duration:
    """Return a Duration for a non-negative number of seconds."""
    whole = int(seconds)
    return duration_pb2.Duration(seconds=whole, nanos=int((seconds - whole) * 1e9))


def seconds(value: duration_pb2.Duration | timestamp_pb2.Timestamp) -> float:
    """Return a Duration (or a Timestamp) in seconds."""
    return float(value.seconds + value.nanos * 1e-9)
