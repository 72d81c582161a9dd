"""``JobStore`` over the manager's database (the ``job`` table): what several managers share.

``finish`` and ``set_progress`` are conditional updates (``WHERE state = 'PENDING'``), so a job ends once however
many managers race for it, and a late progress report cannot touch a job that ended.

A job's credentials are kept in ``secret`` sealed (``sealing``: AES-GCM bound to the job's id, with the
operator's key) and emptied by the update that ends the job; reading a job never opens them, only ``secrets``
(the runner) does.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dragonfly.manager.jobs.model import PENDING, JobRecord, NewJob, utcnow
from dragonfly.manager.jobs.models import Job
from dragonfly.manager.jobs.sealing import Sealer, SecretsUnavailable, is_sealed

log = logging.getLogger(__name__)


def record_of(row: Job) -> JobRecord:
    """Return the engine's view of a row."""
    return JobRecord(
        id=row.id,
        type=row.type,
        args=dict(row.args or {}),
        state=row.state,
        bio=row.bio,
        task_id=row.task_id,
        user_id=row.user_id,
        scheduler_cluster_ids=[int(x) for x in row.scheduler_cluster_ids or ()],
        result=dict(row.result or {}),
        progress=dict(row.progress or {}),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


class DatabaseJobStore:
    """Jobs in the ``job`` table."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], sealer: Sealer) -> None:
        self._sessions = sessions
        self._sealer = sealer

    @property
    def key_id(self) -> str:
        """Return the id of the key that seals new jobs' credentials (shown in logs; not the key)."""
        return self._sealer.key_id

    async def create(self, job: NewJob) -> JobRecord:
        async with self._sessions() as session:
            row = Job(
                type=job.type,
                args=dict(job.args),
                secret={},
                bio=job.bio,
                task_id=job.task_id,
                user_id=job.user_id,
                scheduler_cluster_ids=list(job.scheduler_cluster_ids),
                state=PENDING,
                result={},
                progress={},
            )
            session.add(row)
            if job.secret:
                # The envelope is bound to the id, known once the row is flushed; one transaction all the same.
                await session.flush()
                row.secret = self._sealer.seal(row.id, job.secret)
            await session.commit()
            await session.refresh(row)
            return record_of(row)

    async def get(self, job_id: int) -> JobRecord | None:
        async with self._sessions() as session:
            row = await session.get(Job, job_id)
            return record_of(row) if row is not None else None

    async def secrets(self, job_id: int) -> dict[str, Any]:
        async with self._sessions() as session:
            stored = await session.scalar(select(Job.secret).where(Job.id == job_id, Job.state == PENDING))
        if not stored:
            return {}
        if not is_sealed(stored):
            log.warning("job %d: its credentials are stored in clear (written before sealing)", job_id)
            return dict(stored)
        return self._sealer.open(job_id, stored)

    async def reseal(self) -> int:
        """Seal what pending jobs hold in clear (rows from before sealing) or under a previous key; return how many.

        Run at start: an upgraded manager leaves no credential readable in a row, and once every manager has started
        with a rotated key, no pending job needs the previous one. Rows sealed with a key this manager does not hold
        are left alone (another manager may hold it; the run reports it).
        """
        changed = 0
        async with self._sessions() as session:
            rows = (await session.execute(select(Job.id, Job.secret).where(Job.state == PENDING))).all()
            for job_id, stored in rows:
                if not stored or (is_sealed(stored) and stored.get("key_id") == self._sealer.key_id):
                    continue
                try:
                    clear = self._sealer.open(job_id, stored) if is_sealed(stored) else dict(stored)
                except SecretsUnavailable:
                    continue
                await session.execute(
                    update(Job)
                    .where(Job.id == job_id, Job.state == PENDING)
                    .values(secret=self._sealer.seal(job_id, clear))
                )
                changed += 1
            await session.commit()
        if changed:
            log.info("sealed pending jobs' credentials with the current key", extra={"jobs": changed})
        return changed

    async def set_progress(self, job_id: int, progress: Mapping[str, Any]) -> None:
        async with self._sessions() as session:
            await session.execute(
                update(Job)
                .where(Job.id == job_id, Job.state == PENDING)
                .values(progress=dict(progress), updated_at=utcnow())
            )
            await session.commit()

    async def finish(self, job_id: int, state: str, result: Mapping[str, Any], progress: Mapping[str, Any]) -> bool:
        async with self._sessions() as session:
            answer = await session.execute(
                update(Job)
                .where(Job.id == job_id, Job.state == PENDING)
                .values(state=state, result=dict(result), progress=dict(progress), secret={}, updated_at=utcnow())
            )
            await session.commit()
            return bool(getattr(answer, "rowcount", 0))

    async def query(
        self,
        *,
        type: str | None = None,
        state: str | None = None,
        offset: int = 0,
        limit: int = 10,
        user_id: int | None = None,
    ) -> tuple[list[JobRecord], int]:
        query = select(Job)
        if type is not None:
            query = query.where(Job.type == type)
        if state is not None:
            query = query.where(Job.state == state)
        if user_id is not None:
            query = query.where(Job.user_id == user_id)
        async with self._sessions() as session:
            total = await session.scalar(select(func.count()).select_from(query.subquery())) or 0
            rows = (await session.scalars(query.order_by(Job.id.desc()).offset(offset).limit(limit))).all()
            return [record_of(row) for row in rows], int(total)

    async def unfinished(self) -> list[int]:
        async with self._sessions() as session:
            return list((await session.scalars(select(Job.id).where(Job.state == PENDING).order_by(Job.id))).all())

    async def update_bio(self, job_id: int, bio: str) -> JobRecord | None:
        async with self._sessions() as session:
            await session.execute(update(Job).where(Job.id == job_id).values(bio=bio, updated_at=utcnow()))
            await session.commit()
        return await self.get(job_id)

    async def delete(self, job_id: int) -> bool:
        async with self._sessions() as session:
            answer = await session.execute(delete(Job).where(Job.id == job_id))
            await session.commit()
            return bool(getattr(answer, "rowcount", 0))
