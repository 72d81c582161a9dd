"""Routes of the cluster resources: scheduler clusters, seed-peer clusters, schedulers, seed peers, applications."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from dragonfly.manager import models
from dragonfly.manager.api import schemas
from dragonfly.manager.api.crud import crud_router
from dragonfly.manager.api.deps import Principal
from dragonfly.manager.api.errors import APIError


def _json(value: BaseModel | None) -> dict[str, Any]:
    return schemas.dump(value)


async def _load_all(session: AsyncSession, model: Any, ids: list[int], what: str) -> list[Any]:
    rows = list((await session.scalars(select(model).where(model.id.in_(ids)))).all())
    missing = sorted(set(ids) - {row.id for row in rows})
    if missing:
        raise APIError(422, f"{what} {', '.join(map(str, missing))} not found")
    return rows


async def _scheduler_cluster_write(
    session: AsyncSession, row: models.SchedulerCluster, fields: dict[str, Any], _principal: Principal
) -> None:
    if fields.get("seed_peer_cluster_ids") is not None:
        row.seed_peer_clusters = await _load_all(
            session, models.SeedPeerCluster, fields["seed_peer_cluster_ids"], "seed peer cluster"
        )
    if fields.get("is_default"):
        # One default cluster: the one hosts fall back to when no scope matches.
        query = update(models.SchedulerCluster).where(models.SchedulerCluster.is_default.is_(True))
        if row.id is not None:
            query = query.where(models.SchedulerCluster.id != row.id)
        await session.execute(query.values(is_default=False))


def _scheduler_cluster_out(row: models.SchedulerCluster) -> schemas.SchedulerClusterOut:
    out = schemas.SchedulerClusterOut.model_validate(row)
    out.seed_peer_cluster_ids = sorted(c.id for c in row.seed_peer_clusters)
    return out


async def _seed_peer_cluster_write(
    session: AsyncSession, row: models.SeedPeerCluster, fields: dict[str, Any], _principal: Principal
) -> None:
    if fields.get("scheduler_cluster_ids") is not None:
        row.scheduler_clusters = await _load_all(
            session, models.SchedulerCluster, fields["scheduler_cluster_ids"], "scheduler cluster"
        )


def _seed_peer_cluster_out(row: models.SeedPeerCluster) -> schemas.SeedPeerClusterOut:
    out = schemas.SeedPeerClusterOut.model_validate(row)
    out.scheduler_cluster_ids = sorted(c.id for c in row.scheduler_clusters)
    return out


async def _scheduler_write(
    session: AsyncSession, row: models.Scheduler, fields: dict[str, Any], _principal: Principal
) -> None:
    if (
        "scheduler_cluster_id" in fields
        and await session.get(models.SchedulerCluster, row.scheduler_cluster_id) is None
    ):
        raise APIError(422, f"scheduler cluster {row.scheduler_cluster_id} not found")


async def _seed_peer_write(
    session: AsyncSession, row: models.SeedPeer, fields: dict[str, Any], _principal: Principal
) -> None:
    if "seed_peer_cluster_id" in fields and await session.get(models.SeedPeerCluster, row.seed_peer_cluster_id) is None:
        raise APIError(422, f"seed peer cluster {row.seed_peer_cluster_id} not found")


async def _application_write(
    _session: AsyncSession, row: models.Application, _fields: dict[str, Any], principal: Principal
) -> None:
    if row.user_id is None:
        row.user_id = principal.user_id


def features_router() -> APIRouter:
    """``GET /scheduler-features``: the features a scheduler may announce (Dragonfly's route)."""
    from fastapi import Depends

    from dragonfly.manager import auth
    from dragonfly.manager.api.deps import require

    router = APIRouter(tags=["schedulers"])

    @router.get("/scheduler-features", summary="Features a scheduler may announce")
    async def scheduler_features(_p: Principal = Depends(require("schedulers", auth.ACTION_READ))) -> list[str]:
        return ["schedule", "preheat"]

    return router


def routers() -> list[APIRouter]:
    """Return the routers of the cluster resources."""
    cluster_json = {"config": _json, "client_config": _json, "seed_client_config": _json, "scopes": _json}
    return [
        crud_router(
            obj="scheduler-clusters",
            model=models.SchedulerCluster,
            noun="scheduler cluster",
            create=schemas.SchedulerClusterCreate,
            update=schemas.SchedulerClusterUpdate,
            out=schemas.SchedulerClusterOut,
            filters=schemas.NameFilter,
            before_write=_scheduler_cluster_write,
            to_out=_scheduler_cluster_out,
            columns=cluster_json,
            load_options=(selectinload(models.SchedulerCluster.seed_peer_clusters),),
        ),
        crud_router(
            obj="seed-peer-clusters",
            model=models.SeedPeerCluster,
            noun="seed peer cluster",
            create=schemas.SeedPeerClusterCreate,
            update=schemas.SeedPeerClusterUpdate,
            out=schemas.SeedPeerClusterOut,
            filters=schemas.NameFilter,
            before_write=_seed_peer_cluster_write,
            to_out=_seed_peer_cluster_out,
            columns={"config": _json},
            load_options=(selectinload(models.SeedPeerCluster.scheduler_clusters),),
        ),
        crud_router(
            obj="schedulers",
            model=models.Scheduler,
            noun="scheduler",
            create=schemas.SchedulerCreate,
            update=schemas.SchedulerUpdate,
            out=schemas.SchedulerOut,
            filters=schemas.SchedulerFilter,
            before_write=_scheduler_write,
        ),
        crud_router(
            obj="seed-peers",
            model=models.SeedPeer,
            noun="seed peer",
            create=schemas.SeedPeerCreate,
            update=schemas.SeedPeerUpdate,
            out=schemas.SeedPeerOut,
            filters=schemas.SeedPeerFilter,
            before_write=_seed_peer_write,
        ),
        crud_router(
            obj="configs",
            model=models.ConfigEntry,
            noun="config",
            create=schemas.ConfigCreate,
            update=schemas.ConfigUpdate,
            out=schemas.ConfigOut,
            filters=schemas.NameFilter,
        ),
        features_router(),
        crud_router(
            obj="applications",
            model=models.Application,
            noun="application",
            create=schemas.ApplicationCreate,
            update=schemas.ApplicationUpdate,
            out=schemas.ApplicationOut,
            filters=schemas.NameFilter,
            before_write=_application_write,
            columns={"priority": _json},
        ),
    ]
