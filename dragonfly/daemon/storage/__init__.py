"""Task content files (positional I/O) and their metadata (SQLite WAL)."""

from dragonfly.daemon.storage.metadata import PieceRecord, TaskRecord
from dragonfly.daemon.storage.storage import Storage

__all__ = ["PieceRecord", "Storage", "TaskRecord"]
