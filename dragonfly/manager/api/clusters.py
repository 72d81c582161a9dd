"""Dragonfly's combined "cluster": a scheduler cluster and its seed-peer cluster, created, read, changed and deleted
together (``/api/v1/clusters``, and ``/oapi/v1/clusters`` for personal access tokens). The cluster's id is its
scheduler cluster's id; the seed-peer cluster is the first one linked to it (one is made with the same name)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request, Response
from pydantic import BaseModel, Field
from sqlalchemy import select, update
from sqlalchemy.orm import selectinload

from dragonfly.manager import auth, models
from dragonfly.manager.api import schemas
from dragonfly.manager.api.deps import DB, Paging, Principal, paginate, require
from dragonfly.manager.api.errors import not_found

Ident = Annotated[int, Path(ge=1, le=2**63 - 1)]


class ClusterCreate(schemas.Request):
    name: schemas.Name
    bio: schemas.Bio = ""
    scopes: schemas.Scopes = Field(default_factory=schemas.Scopes)
    scheduler_cluster_config: schemas.SchedulerClusterConfig = Field(default_factory=schemas.SchedulerClusterConfig)
    seed_peer_cluster_config: schemas.SeedPeerClusterConfig = Field(default_factory=schemas.SeedPeerClusterConfig)
    peer_cluster_config: schemas.ClientConfig = Field(default_factory=schemas.ClientConfig)
    is_default: bool = False


class ClusterUpdate(schemas.Request):
    bio: schemas.Bio | None = None
    scopes: schemas.Scopes | None = None
    scheduler_cluster_config: schemas.SchedulerClusterConfig | None = None
    seed_peer_cluster_config: schemas.SeedPeerClusterConfig | None = None
    peer_cluster_config: schemas.ClientConfig | None = None
    is_default: bool | None = None


class ClusterOut(BaseModel):
    id: int
    name: str
    bio: str
    scopes: dict[str, Any]
    scheduler_cluster_id: int
    seed_peer_cluster_id: int | None
    scheduler_cluster_config: dict[str, Any]
    seed_peer_cluster_config: dict[str, Any]
    peer_cluster_config: dict[str, Any]
    is_default: bool
    created_at: dt.datetime
    updated_at: dt.datetime


def _out(cluster: models.SchedulerCluster) -> ClusterOut:
    seed = cluster.seed_peer_clusters[0] if cluster.seed_peer_clusters else None
    return ClusterOut(
        id=cluster.id,
        name=cluster.name,
        bio=cluster.bio,
        scopes=cluster.scopes or {},
        scheduler_cluster_id=cluster.id,
        seed_peer_cluster_id=seed.id if seed else None,
        scheduler_cluster_config=cluster.config or {},
        seed_peer_cluster_config=seed.config if seed else {},
        peer_cluster_config=cluster.client_config or {},
        is_default=cluster.is_default,
        created_at=cluster.created_at,
        updated_at=cluster.updated_at,
    )


async def _load(session: DB, ident: int) -> models.SchedulerCluster:
    cluster = await session.scalar(
        select(models.SchedulerCluster)
        .where(models.SchedulerCluster.id == ident)
        .options(selectinload(models.SchedulerCluster.seed_peer_clusters))
        .execution_options(populate_existing=True)
    )
    if cluster is None:
        raise not_found("cluster", ident)
    return cluster


async def _only_default(session: DB, keep: int) -> None:
    await session.execute(
        update(models.SchedulerCluster)
        .where(models.SchedulerCluster.is_default.is_(True), models.SchedulerCluster.id != keep)
        .values(is_default=False)
    )


def router() -> APIRouter:
    """Return the routes of ``/clusters`` (mounted under /api/v1 and /oapi/v1)."""
    r = APIRouter(prefix="/clusters", tags=["clusters"])
    read = Depends(require("clusters", auth.ACTION_READ))
    write = Depends(require("clusters", auth.ACTION_WRITE))

    @r.get("", response_model=list[ClusterOut], summary="List clusters")
    async def list_clusters(
        request: Request, response: Response, session: DB, page: Paging, _p: Principal = read
    ) -> list[ClusterOut]:
        query = (
            select(models.SchedulerCluster)
            .order_by(models.SchedulerCluster.id)
            .options(selectinload(models.SchedulerCluster.seed_peer_clusters))
        )
        return [_out(c) for c in await paginate(session, query, page, request, response)]

    @r.get("/{ident}", response_model=ClusterOut, summary="Get a cluster")
    async def get_cluster(ident: Ident, session: DB, _p: Principal = read) -> ClusterOut:
        return _out(await _load(session, ident))

    @r.post("", response_model=ClusterOut, status_code=201, summary="Create a cluster")
    async def create_cluster(body: ClusterCreate, session: DB, _p: Principal = write) -> ClusterOut:
        seed = models.SeedPeerCluster(name=body.name, bio=body.bio, config=schemas.dump(body.seed_peer_cluster_config))
        cluster = models.SchedulerCluster(
            name=body.name,
            bio=body.bio,
            scopes=schemas.dump(body.scopes),
            config=schemas.dump(body.scheduler_cluster_config),
            client_config=schemas.dump(body.peer_cluster_config),
            seed_client_config={},
            is_default=body.is_default,
        )
        cluster.seed_peer_clusters = [seed]
        session.add_all([seed, cluster])
        await session.flush()
        if body.is_default:
            await _only_default(session, cluster.id)
        await session.commit()
        return _out(await _load(session, cluster.id))

    @r.patch("/{ident}", response_model=ClusterOut, summary="Update a cluster")
    async def update_cluster(ident: Ident, body: ClusterUpdate, session: DB, _p: Principal = write) -> ClusterOut:
        cluster = await _load(session, ident)
        fields = body.model_dump(exclude_unset=True)
        seed = cluster.seed_peer_clusters[0] if cluster.seed_peer_clusters else None
        if "bio" in fields and body.bio is not None:
            cluster.bio = body.bio
            if seed is not None:
                seed.bio = body.bio
        if body.scopes is not None:
            cluster.scopes = schemas.dump(body.scopes)
        if body.scheduler_cluster_config is not None:
            cluster.config = schemas.dump(body.scheduler_cluster_config)
        if body.peer_cluster_config is not None:
            cluster.client_config = schemas.dump(body.peer_cluster_config)
        if body.seed_peer_cluster_config is not None and seed is not None:
            seed.config = schemas.dump(body.seed_peer_cluster_config)
        if body.is_default is not None:
            cluster.is_default = body.is_default
            if body.is_default:
                await _only_default(session, cluster.id)
        await session.commit()
        return _out(await _load(session, ident))

    @r.delete("/{ident}", status_code=204, summary="Delete a cluster (and its seed-peer cluster)")
    async def delete_cluster(ident: Ident, session: DB, _p: Principal = write) -> Response:
        cluster = await _load(session, ident)
        for seed in list(cluster.seed_peer_clusters):
            # Only a seed-peer cluster no other scheduler cluster uses goes with it.
            others = await session.scalar(
                select(models.seed_peer_cluster_scheduler_cluster.c.scheduler_cluster_id)
                .where(models.seed_peer_cluster_scheduler_cluster.c.seed_peer_cluster_id == seed.id)
                .where(models.seed_peer_cluster_scheduler_cluster.c.scheduler_cluster_id != ident)
                .limit(1)
            )
            if others is None:
                await session.delete(seed)
        await session.delete(cluster)
        await session.commit()
        return Response(status_code=204)

    return r
