"""The job record, its states and the store it lives in.

A job's ``state`` is one of Dragonfly's: ``PENDING`` until it ends, then ``SUCCESS`` or ``FAILURE``. Harbor polls
that field and fails a preheat on any other string, so finer progress lives in ``progress`` (phase ``queued`` →
``running`` → ``succeeded`` | ``failed`` | ``cancelled``, the attempt number, which manager runs it, clusters done)
and the per-scheduler outcome in ``result`` (Dragonfly's shape: ``job_states[].results[]`` with ``success_tasks``,
``failure_tasks``, ``scheduler_cluster_id``).

``JobStore`` is what the engine needs from storage; ``MemoryJobStore`` keeps jobs in this process (tests, and a
manager without a database); the manager's database store implements the same protocol. ``finish`` is
conditional (only a ``PENDING`` job can end), which is what makes a job end exactly once when several managers
race for it. A job's credentials are not part of its record: only the runner asks for them (``secrets``), so
nothing that shows a record can show them.
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

PENDING = "PENDING"
SUCCESS = "SUCCESS"
FAILURE = "FAILURE"
#: Machinery's states, accepted as list filters (the manager only ever writes the three above).
STATES = (PENDING, "RECEIVED", "STARTED", "RETRY", SUCCESS, FAILURE)
TERMINAL = (SUCCESS, FAILURE)

PHASE_QUEUED = "queued"
PHASE_RUNNING = "running"
PHASE_SUCCEEDED = "succeeded"
PHASE_FAILED = "failed"
PHASE_CANCELLED = "cancelled"

TYPE_PREHEAT = "preheat"


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def rfc3339(moment: dt.datetime | None) -> str | None:
    """Format a time as RFC 3339 with its zone (``2026-12-01T10:24:14.123456Z``), as Harbor parses it."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


@dataclass(slots=True)
class JobRecord:
    """One job as stored, without its credentials (``JobStore.secrets``); everything here may be shown."""

    id: int
    type: str
    args: dict[str, Any]
    state: str = PENDING
    bio: str = ""
    task_id: str = ""
    user_id: int | None = None
    scheduler_cluster_ids: list[int] = field(default_factory=list)
    result: dict[str, Any] = field(default_factory=dict)
    progress: dict[str, Any] = field(default_factory=dict)
    created_at: dt.datetime = field(default_factory=utcnow)
    updated_at: dt.datetime = field(default_factory=utcnow)

    @property
    def done(self) -> bool:
        return self.state in TERMINAL

    def to_json(self) -> dict[str, Any]:
        """Return the job as Dragonfly's job answer (``id`` an integer, times RFC 3339 with zone, no secrets)."""
        return {
            "id": self.id,
            "created_at": rfc3339(self.created_at),
            "updated_at": rfc3339(self.updated_at),
            "is_del": 0,
            "task_id": self.task_id,
            "bio": self.bio,
            "type": self.type,
            "state": self.state,
            "args": self.args,
            "result": self.result,
            "progress": self.progress,
            "user_id": self.user_id or 0,
            "scheduler_clusters": [{"id": cluster_id} for cluster_id in self.scheduler_cluster_ids],
            "seed_peer_clusters": [],
        }


@dataclass(frozen=True, slots=True)
class NewJob:
    """What a caller submits: the type, the checked public args, the secrets kept apart, the target clusters."""

    type: str
    args: Mapping[str, Any]
    secret: Mapping[str, Any] = field(default_factory=dict)
    bio: str = ""
    user_id: int | None = None
    scheduler_cluster_ids: Sequence[int] = ()
    task_id: str = ""


class JobStore(Protocol):
    """Where jobs live; the engine's only view of storage."""

    async def create(self, job: NewJob) -> JobRecord: ...

    async def get(self, job_id: int) -> JobRecord | None: ...

    async def secrets(self, job_id: int) -> dict[str, Any]:
        """Return the credentials of a ``PENDING`` job ({} once it ended); SecretsUnavailable when unreadable."""

    async def set_progress(self, job_id: int, progress: Mapping[str, Any]) -> None:
        """Replace the progress of a job that has not ended."""

    async def finish(self, job_id: int, state: str, result: Mapping[str, Any], progress: Mapping[str, Any]) -> bool:
        """End a ``PENDING`` job (and drop its secrets); return False if it had already ended."""

    async def query(
        self,
        *,
        type: str | None = None,
        state: str | None = None,
        offset: int = 0,
        limit: int = 10,
        user_id: int | None = None,
    ) -> tuple[list[JobRecord], int]: ...

    async def update_bio(self, job_id: int, bio: str) -> JobRecord | None: ...

    async def unfinished(self) -> list[int]:
        """Return the ids of the jobs still ``PENDING``, oldest first (requeued when a lone manager starts)."""

    async def delete(self, job_id: int) -> bool: ...


class MemoryJobStore:
    """Jobs in this process's memory (lost when it exits)."""

    def __init__(self) -> None:
        self._jobs: dict[int, JobRecord] = {}
        self._secrets: dict[int, dict[str, Any]] = {}
        self._next = 1
        self._lock = asyncio.Lock()

    async def create(self, job: NewJob) -> JobRecord:
        async with self._lock:
            record = JobRecord(
                id=self._next,
                type=job.type,
                args=copy.deepcopy(dict(job.args)),
                bio=job.bio,
                task_id=job.task_id,
                user_id=job.user_id,
                scheduler_cluster_ids=list(job.scheduler_cluster_ids),
            )
            self._jobs[record.id] = record
            if job.secret:
                self._secrets[record.id] = copy.deepcopy(dict(job.secret))
            self._next += 1
            return copy.deepcopy(record)

    async def get(self, job_id: int) -> JobRecord | None:
        record = self._jobs.get(job_id)
        return copy.deepcopy(record) if record else None

    async def secrets(self, job_id: int) -> dict[str, Any]:
        return copy.deepcopy(self._secrets.get(job_id, {}))

    async def set_progress(self, job_id: int, progress: Mapping[str, Any]) -> None:
        record = self._jobs.get(job_id)
        if record and not record.done:
            record.progress = copy.deepcopy(dict(progress))
            record.updated_at = utcnow()

    async def finish(self, job_id: int, state: str, result: Mapping[str, Any], progress: Mapping[str, Any]) -> bool:
        async with self._lock:
            record = self._jobs.get(job_id)
            if record is None or record.done:
                return False
            self._jobs[job_id] = replace(
                record,
                state=state,
                result=copy.deepcopy(dict(result)),
                progress=copy.deepcopy(dict(progress)),
                updated_at=utcnow(),
            )
            self._secrets.pop(job_id, None)
            return True

    async def query(
        self,
        *,
        type: str | None = None,
        state: str | None = None,
        offset: int = 0,
        limit: int = 10,
        user_id: int | None = None,
    ) -> tuple[list[JobRecord], int]:
        chosen = [
            job
            for job in sorted(self._jobs.values(), key=lambda job: job.id, reverse=True)
            if (type is None or job.type == type)
            and (state is None or job.state == state)
            and (user_id is None or job.user_id == user_id)
        ]
        return [copy.deepcopy(job) for job in chosen[offset : offset + limit]], len(chosen)

    async def update_bio(self, job_id: int, bio: str) -> JobRecord | None:
        record = self._jobs.get(job_id)
        if record is None:
            return None
        record.bio = bio
        record.updated_at = utcnow()
        return copy.deepcopy(record)

    async def unfinished(self) -> list[int]:
        return sorted(job.id for job in self._jobs.values() if not job.done)

    async def delete(self, job_id: int) -> bool:
        self._secrets.pop(job_id, None)
        return self._jobs.pop(job_id, None) is not None
