"""The records of persistent cache copies besides their content (``metadata/entries.db``)."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from dataclasses import asdict, dataclass, field

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Entry:
    """What is known of one persistent cache task besides its content: kept in ``entries.db``."""

    id: str
    persistent: bool
    persistent_replica_count: int
    ttl: float
    created_at: float
    tag: str = ""
    application: str = ""
    #: ``sha256:<hex>`` of the content, verified when the entry was made.
    content_digest: str = ""
    importer: bool = False
    uploaded: int = field(default=0)
    #: The peer id this host's copy has at the scheduler (re-announced under it after a scheduler restart).
    peer_id: str = ""

    def expires_at(self) -> float:
        return self.created_at + self.ttl

    def expired(self, now: float) -> bool:
        return now >= self.expires_at()


class EntryIndex:
    """The entries in a small SQLite table (one JSON row each)."""

    def __init__(self, path: str) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        os.close(fd)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS entries (id TEXT PRIMARY KEY, body TEXT NOT NULL)")

    def load(self) -> dict[str, Entry]:
        entries = {}
        for task_id, body in self._db.execute("SELECT id, body FROM entries"):
            try:
                entries[task_id] = Entry(**json.loads(body))
            except (TypeError, ValueError):
                log.warning("dropping an unreadable persistent cache entry", extra={"task_id": task_id})
        return entries

    def put(self, entry: Entry) -> None:
        self._db.execute("INSERT OR REPLACE INTO entries VALUES (?, ?)", (entry.id, json.dumps(asdict(entry))))

    def delete(self, task_id: str) -> None:
        self._db.execute("DELETE FROM entries WHERE id = ?", (task_id,))

    def close(self) -> None:
        self._db.close()
