"""Queries shared by the gRPC service, the liveness checker and extensions (preheat picks schedulers here)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from dragonfly.manager import models


async def active_schedulers(
    session: AsyncSession, cluster_ids: Iterable[int] | None = None, feature: str | None = None
) -> list[models.Scheduler]:
    """Return the active schedulers (of ``cluster_ids`` if given; with ``feature`` if given), by id."""
    query = select(models.Scheduler).where(models.Scheduler.state == models.STATE_ACTIVE).order_by(models.Scheduler.id)
    if cluster_ids is not None:
        query = query.where(models.Scheduler.scheduler_cluster_id.in_(list(cluster_ids)))
    rows = list((await session.scalars(query)).all())
    if feature is not None:
        rows = [row for row in rows if feature in (row.features or ())]
    return rows


async def expire_keep_alives(session: AsyncSession, max_age: float) -> int:
    """Mark schedulers and seed peers inactive whose last keep-alive is over ``max_age`` s old; return how many."""
    cutoff = models.utcnow() - dt.timedelta(seconds=max_age)
    changed = 0
    for model in (models.Scheduler, models.SeedPeer):
        result = await session.execute(
            update(model)
            .where(model.state == models.STATE_ACTIVE)
            .where((model.last_keep_alive_at.is_(None)) | (model.last_keep_alive_at < cutoff))
            .values(state=models.STATE_INACTIVE)
        )
        changed += getattr(result, "rowcount", 0) or 0
    await session.commit()
    return changed


async def instance_counts(session: AsyncSession) -> dict[tuple[str, str], int]:
    """Return {(kind, state): count} of schedulers and seed peers (both states always present)."""
    out: dict[tuple[str, str], int] = {}
    for kind, model in (("scheduler", models.Scheduler), ("seed_peer", models.SeedPeer)):
        for state in (models.STATE_ACTIVE, models.STATE_INACTIVE):
            out[(kind, state)] = 0
        rows = await session.execute(select(model.state, func.count()).group_by(model.state))
        for state, count in rows.all():
            out[(kind, str(state))] = int(count)
    return out
