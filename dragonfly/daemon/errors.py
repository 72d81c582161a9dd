"""Errors of the daemon's download and storage paths; each message is what the user finally reads."""

from __future__ import annotations

from dragonfly.common.errors import DragonflyError


class InvalidTaskId(DragonflyError, ValueError):
    """A task id is not 64 lower-case hex characters, so it must never become a file name."""

    def __init__(self, task_id: str) -> None:
        super().__init__(f"invalid task id {task_id[:80]!r}: expected 64 lower-case hex characters")
        self.task_id = task_id


class TaskNotFound(DragonflyError, LookupError):
    """No task with this id is stored on this daemon."""

    def __init__(self, task_id: str) -> None:
        super().__init__(f"task {task_id} not found")
        self.task_id = task_id


class NoSpace(DragonflyError, OSError):
    """The storage directory has no room for a task's content."""


class BackendError(DragonflyError):
    """The origin refused or broke a request; ``status_code`` is its HTTP status when it answered."""

    def __init__(self, message: str, *, status_code: int | None = None, header: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.header = header or {}


class DownloadFailed(DragonflyError):
    """A task could not be completed (P2P exhausted and back-to-source disabled, or it failed too)."""


class OutputError(DragonflyError, OSError):
    """The output path cannot be written: missing directory, existing file without overwrite, no permission."""


class DownloadTimeout(DownloadFailed, TimeoutError):
    """The requester's timeout passed before the task finished."""
