"""Task and piece metadata in SQLite (WAL), so finished tasks are found again after a restart.

Only the event-loop thread touches the connection. Piece rows are written in batches (one transaction per
``_PIECE_BATCH`` pieces or ``_PIECE_BATCH_AGE`` seconds, and whenever a task row is written), because a commit
per piece costs the event loop more than the piece's bookkeeping itself. A crash can therefore forget the last
few finished pieces of an unfinished task; they are simply downloaded again. Like Dragonfly's RocksDB store,
nothing is fsynced: the content file's bytes are not either.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from dragonfly.daemon.errors import NoSpace

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    piece_length INTEGER NOT NULL,
    content_length INTEGER NOT NULL,
    response_header TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    finished_at REAL,
    failed_at REAL,
    content_mtime_ns INTEGER,
    content_inode INTEGER
);
CREATE TABLE IF NOT EXISTS pieces (
    task_id TEXT NOT NULL,
    number INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    length INTEGER NOT NULL,
    digest TEXT NOT NULL,
    parent_id TEXT,
    traffic_type INTEGER NOT NULL,
    cost REAL NOT NULL,
    created_at REAL NOT NULL,
    strong_digest TEXT,
    PRIMARY KEY (task_id, number)
) WITHOUT ROWID;
"""


_PUT_PIECES = "INSERT OR REPLACE INTO pieces VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_PIECE_BATCH = 32
_PIECE_BATCH_AGE = 0.5


@dataclass(slots=True)
class PieceRecord:
    """A finished, verified piece: its bytes are in the content file and match ``digest``.

    ``digest`` is the CRC-32 that Vortex carries (what Dragonfly peers check); ``strong_digest`` the BLAKE3 this
    daemon computed, reported to the scheduler and checked by children (docs/security.md).
    """

    number: int
    offset: int
    length: int
    digest: str
    parent_id: str | None
    traffic_type: int
    cost: float
    created_at: float
    strong_digest: str | None = None


@dataclass(slots=True)
class TaskRecord:
    """A stored task; ``pieces`` holds only finished pieces."""

    id: str
    url: str
    piece_length: int
    content_length: int
    response_header: dict[str, str]
    created_at: float
    updated_at: float
    finished_at: float | None = None
    failed_at: float | None = None
    pieces: dict[int, PieceRecord] = field(default_factory=dict)
    # The content file's mtime and inode when the task finished: a local hit whose file differs is not used.
    content_mtime_ns: int | None = None
    content_inode: int | None = None


class MetadataStore:
    """The SQLite database at ``path``."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        # Databases written by earlier versions lack the newer columns.
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(pieces)")}
        if "strong_digest" not in columns:
            self._db.execute("ALTER TABLE pieces ADD COLUMN strong_digest TEXT")
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(tasks)")}
        for column in ("content_mtime_ns", "content_inode"):
            if column not in columns:
                self._db.execute(f"ALTER TABLE tasks ADD COLUMN {column} INTEGER")
        self._pending: list[tuple[object, ...]] = []
        self._pending_since = 0.0

    def close(self) -> None:
        self.flush()
        self._db.close()

    @contextlib.contextmanager
    def _writing(self, what: str) -> Iterator[None]:
        """Turn SQLite's "database or disk is full" into NoSpace naming the database file."""
        try:
            yield
        except sqlite3.Error as exc:
            if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "full" in str(exc):
                raise NoSpace(f"no space left on device: cannot write {what} to {self.path}") from exc
            raise

    def flush(self) -> None:
        """Write the batched piece rows in one transaction."""
        if not self._pending:
            return
        with self._writing("piece metadata"), self._db:
            self._db.execute("BEGIN")
            self._db.executemany(_PUT_PIECES, self._pending)
        self._pending.clear()

    def load_tasks(self) -> dict[str, TaskRecord]:
        """Return every stored task with its finished pieces."""
        tasks: dict[str, TaskRecord] = {}
        for row in self._db.execute(
            "SELECT id, url, piece_length, content_length, response_header, created_at, updated_at, finished_at,"
            " failed_at, content_mtime_ns, content_inode FROM tasks"
        ):
            tasks[row[0]] = TaskRecord(
                id=row[0],
                url=row[1],
                piece_length=row[2],
                content_length=row[3],
                response_header=json.loads(row[4]),
                created_at=row[5],
                updated_at=row[6],
                finished_at=row[7],
                failed_at=row[8],
                content_mtime_ns=row[9],
                content_inode=row[10],
            )
        for row in self._db.execute(
            "SELECT task_id, number, offset, length, digest, parent_id, traffic_type, cost, created_at, strong_digest"
            " FROM pieces"
        ):
            task = tasks.get(row[0])
            if task is not None:
                task.pieces[row[1]] = PieceRecord(*row[1:])
        return tasks

    def put_task(self, task: TaskRecord) -> None:
        """Write the task row, and the batched piece rows with it, in one transaction.

        A task's last pieces and its finished row then cost one commit, not two: a file of one piece commits twice
        (prepared; its piece with the finished row), not three times.
        """
        with self._writing("task metadata"), self._db:
            self._db.execute("BEGIN")
            if self._pending:
                self._db.executemany(_PUT_PIECES, self._pending)
            self._db.execute(
                "INSERT OR REPLACE INTO tasks VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    task.id,
                    task.url,
                    task.piece_length,
                    task.content_length,
                    json.dumps(task.response_header),
                    task.created_at,
                    task.updated_at,
                    task.finished_at,
                    task.failed_at,
                    task.content_mtime_ns,
                    task.content_inode,
                ),
            )
        self._pending.clear()

    def put_piece(self, task_id: str, piece: PieceRecord) -> None:
        now = time.monotonic()
        if not self._pending:
            self._pending_since = now
        self._pending.append(
            (
                task_id,
                piece.number,
                piece.offset,
                piece.length,
                piece.digest,
                piece.parent_id,
                piece.traffic_type,
                piece.cost,
                piece.created_at,
                piece.strong_digest,
            )
        )
        if len(self._pending) >= _PIECE_BATCH or now - self._pending_since >= _PIECE_BATCH_AGE:
            self.flush()

    def delete_pieces(self, task_id: str) -> None:
        self.flush()
        self._db.execute("DELETE FROM pieces WHERE task_id = ?", (task_id,))

    def delete_task(self, task_id: str) -> None:
        self.flush()
        self._db.execute("DELETE FROM pieces WHERE task_id = ?", (task_id,))
        self._db.execute("DELETE FROM tasks WHERE id = ?", (task_id,))
