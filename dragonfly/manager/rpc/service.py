"""The ``manager.v2.Manager`` servicer: registration, discovery, dynamic config and liveness over gRPC.

Every request field is checked before it reaches the database; an unknown cluster or instance is NOT_FOUND with
a message naming it. Under mutual TLS a scheduler may only register and keep alive itself (certificate role
``scheduler`` and its IP or name), a seed peer likewise (role ``seed-peer``); any cluster member may ask for
schedulers, seed peers and applications.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from dragonfly_api import common_pb2, manager_pb2, manager_pb2_grpc
from google.protobuf import empty_pb2
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from dragonfly.common.authz import Authorizer
from dragonfly.common.identity import ROLE_MANAGER, ROLE_PEER, ROLE_SCHEDULER, ROLE_SEED_PEER, Identity
from dragonfly.manager import models, searcher
from dragonfly.manager.context import ManagerContext

log = logging.getLogger(__name__)

# How long a stopping manager waits for its KeepAlive handlers to mark their instances inactive.
_END_KEEP_ALIVES_WAIT = 3.0

SCHEDULER_SOURCE = manager_pb2.SCHEDULER_SOURCE
PEER_SOURCE = manager_pb2.PEER_SOURCE
SEED_PEER_SOURCE = manager_pb2.SEED_PEER_SOURCE

_HOSTNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$")
_MEMBERS = (ROLE_SCHEDULER, ROLE_SEED_PEER, ROLE_PEER, ROLE_MANAGER)
_FEATURES = ("schedule", "preheat")
_MAX_TEXT = 1024
_MAX_CONFIG = 64 * 1024


class BadRequest(Exception):
    """A request field is invalid; answered with INVALID_ARGUMENT."""


class NotFound(Exception):
    """A named record does not exist; answered with NOT_FOUND."""


def _hostname(value: str, field: str = "hostname") -> str:
    if not _HOSTNAME.match(value):
        raise BadRequest(f"{field} {value[:64]!r} is not a host name")
    return value


def _ip(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise BadRequest(f"ip {value[:64]!r} is not an IP address") from None


def _port(value: int, field: str = "port") -> int:
    if not 1 <= value <= 65535:
        raise BadRequest(f"{field} {value} is not a TCP port")
    return value


def _text(value: str, field: str) -> str:
    if len(value) > _MAX_TEXT or any(ord(c) < 32 for c in value):
        raise BadRequest(f"{field} is longer than {_MAX_TEXT} characters or has control characters")
    return value


def _cluster_id(value: int, field: str) -> int:
    if not 1 <= value < 2**63:
        raise BadRequest(f"{field} {value} is not a cluster id (>= 1)")
    return value


def _json(value: dict[str, Any] | list[Any] | None) -> bytes:
    return json.dumps(value or {}, separators=(",", ":"), sort_keys=True).encode()


def seed_peer_cluster_pb(cluster: models.SeedPeerCluster) -> manager_pb2.SeedPeerCluster:
    """Return the message of a seed-peer cluster."""
    return manager_pb2.SeedPeerCluster(id=cluster.id, name=cluster.name, bio=cluster.bio, config=_json(cluster.config))


def seed_peer_pb(seed: models.SeedPeer, cluster: models.SeedPeerCluster | None = None) -> manager_pb2.SeedPeer:
    """Return the message of a seed peer (with its cluster when given)."""
    message = manager_pb2.SeedPeer(
        id=seed.id,
        hostname=seed.hostname,
        type=seed.type,
        idc=seed.idc,
        location=seed.location,
        ip=seed.ip,
        port=seed.port,
        download_port=seed.download_port,
        state=seed.state,
        seed_peer_cluster_id=seed.seed_peer_cluster_id,
    )
    if cluster is not None:
        message.seed_peer_cluster.CopyFrom(seed_peer_cluster_pb(cluster))
    return message


def scheduler_cluster_pb(cluster: models.SchedulerCluster) -> manager_pb2.SchedulerCluster:
    """Return the message of a scheduler cluster (JSON configs as bytes, as Dragonfly sends them)."""
    return manager_pb2.SchedulerCluster(
        id=cluster.id,
        name=cluster.name,
        bio=cluster.bio,
        config=_json(cluster.config),
        client_config=_json(cluster.client_config),
        scopes=_json(cluster.scopes),
        seed_client_config=_json(cluster.seed_client_config),
    )


def scheduler_pb(row: models.Scheduler) -> manager_pb2.Scheduler:
    """Return the message of a scheduler without its cluster."""
    return manager_pb2.Scheduler(
        id=row.id,
        hostname=row.hostname,
        idc=row.idc,
        location=row.location,
        ip=row.ip,
        port=row.port,
        state=row.state,
        scheduler_cluster_id=row.scheduler_cluster_id,
        features=_json(list(row.features or [])),
    )


class ManagerServicer(manager_pb2_grpc.ManagerServicer):
    """manager.v2.Manager over the manager's database."""

    #: How long the search's snapshot of clusters and active schedulers is reused. Changes this process makes
    #: (registration, a state flip) drop it at once; the TTL bounds what other managers' changes take to show.
    SNAPSHOT_TTL = 1.0

    def __init__(self, ctx: ManagerContext, authz: Authorizer) -> None:
        self.ctx = ctx
        self.authz = authz
        self._snapshot: tuple[float, list[tuple[dict[str, Any], bool, int, list[manager_pb2.Scheduler]]]] | None = None
        # The handlers of open KeepAlive streams, ended first when the manager stops (end_keep_alives).
        self._keep_alives: set[asyncio.Task[Any]] = set()

    # --- helpers ---

    async def _abort(self, context: grpc.aio.ServicerContext[Any, Any], exc: Exception) -> None:
        code = grpc.StatusCode.NOT_FOUND if isinstance(exc, NotFound) else grpc.StatusCode.INVALID_ARGUMENT
        await context.abort(code, str(exc))

    async def _self_only(
        self, context: grpc.aio.ServicerContext[Any, Any], role: str, hostname: str, ip: str, action: str
    ) -> None:
        """Under mTLS: the caller has ``role`` (or manager) and owns the hostname or IP it registers."""
        identity: Identity | None = await self.authz.require_role(context, (role, ROLE_MANAGER), action)
        if identity is None or identity.has_role(ROLE_MANAGER):
            return
        if not (identity.owns_ip(ip) or identity.owns_name(hostname)):
            await self.authz.deny(context, identity, f"{action} for {hostname}/{ip}: the certificate does not own it")

    async def _instance_key(
        self, context: grpc.aio.ServicerContext[Any, Any], hostname: str, ip: str, cluster_id: int, field: str
    ) -> tuple[str, str, int]:
        """Validate (hostname, ip, cluster id) of a scheduler or seed peer; INVALID_ARGUMENT otherwise."""
        try:
            return _hostname(hostname), _ip(ip), _cluster_id(cluster_id, field)
        except BadRequest as exc:
            await self._abort(context, exc)
            raise

    async def _member(self, context: grpc.aio.ServicerContext[Any, Any], action: str) -> None:
        await self.authz.require_role(context, _MEMBERS, action)

    async def _scheduler_cluster(self, session: AsyncSession, cluster_id: int) -> models.SchedulerCluster:
        cluster = await session.scalar(
            select(models.SchedulerCluster)
            .where(models.SchedulerCluster.id == cluster_id)
            .options(selectinload(models.SchedulerCluster.seed_peer_clusters))
        )
        if cluster is None:
            raise NotFound(f"scheduler cluster {cluster_id} not found")
        return cluster

    async def _scheduler_full(self, session: AsyncSession, row: models.Scheduler) -> manager_pb2.Scheduler:
        """The scheduler with its cluster and the active seed peers of the linked seed-peer clusters."""
        cluster = await self._scheduler_cluster(session, row.scheduler_cluster_id)
        message = scheduler_pb(row)
        message.scheduler_cluster.CopyFrom(scheduler_cluster_pb(cluster))
        by_id = {c.id: c for c in cluster.seed_peer_clusters}
        if by_id:
            seeds = await session.scalars(
                select(models.SeedPeer)
                .where(models.SeedPeer.seed_peer_cluster_id.in_(list(by_id)))
                .where(models.SeedPeer.state == models.STATE_ACTIVE)
                .order_by(models.SeedPeer.id)
            )
            message.seed_peers.extend(seed_peer_pb(s, by_id[s.seed_peer_cluster_id]) for s in seeds)
        return message

    # --- schedulers ---

    async def UpdateScheduler(
        self, request: manager_pb2.UpdateSchedulerRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> manager_pb2.Scheduler:
        try:
            hostname, ip = _hostname(request.hostname), _ip(request.ip)
            port = _port(request.port)
            cluster_id = _cluster_id(request.scheduler_cluster_id, "scheduler_cluster_id")
            idc, location = _text(request.idc, "idc"), _text(request.location, "location")
            features = list(dict.fromkeys(request.features))
            unknown = [f for f in features if f not in _FEATURES]
            if unknown:
                raise BadRequest(f"unknown features {unknown[:5]!r}; known: {', '.join(_FEATURES)}")
            config = self._config(request.config)
        except (BadRequest, NotFound) as exc:
            await self._abort(context, exc)
            raise
        await self._self_only(context, ROLE_SCHEDULER, hostname, ip, "UpdateScheduler")
        async with self.ctx.sessions() as session:
            try:
                await self._scheduler_cluster(session, cluster_id)
            except NotFound as exc:
                await self._abort(context, exc)
            row = await session.scalar(
                select(models.Scheduler).where(
                    models.Scheduler.hostname == hostname,
                    models.Scheduler.ip == ip,
                    models.Scheduler.scheduler_cluster_id == cluster_id,
                )
            )
            if row is None:
                row = models.Scheduler(hostname=hostname, ip=ip, scheduler_cluster_id=cluster_id)
                session.add(row)
            row.port, row.idc, row.location, row.features, row.config = port, idc, location, features, config
            await session.commit()
            self.invalidate()
            log.info("scheduler updated", extra={"hostname": hostname, "ip": ip, "cluster": cluster_id})
            return await self._scheduler_full(session, row)

    @staticmethod
    def _config(raw: bytes) -> dict[str, Any]:
        if not raw:
            return {}
        if len(raw) > _MAX_CONFIG:
            raise BadRequest(f"config is larger than {_MAX_CONFIG} bytes")
        try:
            value = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise BadRequest("config is not JSON") from None
        if not isinstance(value, dict):
            raise BadRequest("config is not a JSON object")
        return value

    async def GetScheduler(
        self, request: manager_pb2.GetSchedulerRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> manager_pb2.Scheduler:
        hostname, ip, cluster_id = await self._instance_key(
            context, request.hostname, request.ip, request.scheduler_cluster_id, "scheduler_cluster_id"
        )
        await self._member(context, "GetScheduler")
        async with self.ctx.sessions() as session:
            row = await session.scalar(
                select(models.Scheduler).where(
                    models.Scheduler.hostname == hostname,
                    models.Scheduler.ip == ip,
                    models.Scheduler.scheduler_cluster_id == cluster_id,
                )
            )
            if row is None:
                await self._abort(context, NotFound(f"scheduler {hostname}/{ip} of cluster {cluster_id} not found"))
            assert row is not None
            try:
                return await self._scheduler_full(session, row)
            except NotFound as exc:
                await self._abort(context, exc)
                raise

    async def ListSchedulers(
        self, request: manager_pb2.ListSchedulersRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> manager_pb2.ListSchedulersResponse:
        try:
            hostname = _hostname(request.hostname) if request.hostname else ""
            ip = _ip(request.ip) if request.ip else ""
            idc, location = _text(request.idc, "idc"), _text(request.location, "location")
            _text(request.version, "version")
            _text(request.commit, "commit")
        except BadRequest as exc:
            await self._abort(context, exc)
            raise
        await self._member(context, "ListSchedulers")
        async with self.ctx.sessions() as session:
            if request.scheduler_cluster_id:
                try:
                    cluster_id = _cluster_id(request.scheduler_cluster_id, "scheduler_cluster_id")
                    await self._scheduler_cluster(session, cluster_id)
                except (BadRequest, NotFound) as exc:
                    await self._abort(context, exc)
                    raise
                rows = await session.scalars(
                    select(models.Scheduler)
                    .where(models.Scheduler.scheduler_cluster_id == cluster_id)
                    .where(models.Scheduler.state == models.STATE_ACTIVE)
                    .order_by(models.Scheduler.id)
                )
                return manager_pb2.ListSchedulersResponse(schedulers=[scheduler_pb(r) for r in rows])
            return await self._search(session, hostname=hostname, ip=ip, idc=idc, location=location)

    async def _search(
        self, session: AsyncSession, *, hostname: str, ip: str, idc: str, location: str
    ) -> manager_pb2.ListSchedulersResponse:
        """Active schedulers with the schedule feature of every cluster, best-fitting cluster first."""
        now = time.monotonic()
        if self._snapshot is None or now - self._snapshot[0] > self.SNAPSHOT_TTL:
            self._snapshot = (now, await self._load_snapshot(session))
        ranked = sorted(
            self._snapshot[1],
            key=lambda c: (
                -searcher.score(c[0], c[1], ip=ip, hostname=hostname, idc=idc, location=location),
                c[2],
            ),
        )
        out = manager_pb2.ListSchedulersResponse()
        for _scopes, _default, _id, schedulers in ranked:
            out.schedulers.extend(schedulers)
        return out

    def invalidate(self) -> None:
        """Forget the search snapshot (a scheduler registered or changed state here)."""
        self._snapshot = None

    async def _load_snapshot(
        self, session: AsyncSession
    ) -> list[tuple[dict[str, Any], bool, int, list[manager_pb2.Scheduler]]]:
        schedulers = (
            await session.scalars(
                select(models.Scheduler)
                .where(models.Scheduler.state == models.STATE_ACTIVE)
                .order_by(models.Scheduler.id)
            )
        ).all()
        by_cluster: dict[int, list[models.Scheduler]] = {}
        for row in schedulers:
            if "schedule" in (row.features or ()):
                by_cluster.setdefault(row.scheduler_cluster_id, []).append(row)
        if not by_cluster:
            return []
        clusters = (
            await session.scalars(
                select(models.SchedulerCluster).where(models.SchedulerCluster.id.in_(list(by_cluster)))
            )
        ).all()
        return [
            (dict(c.scopes or {}), c.is_default, c.id, [scheduler_pb(row) for row in by_cluster[c.id]])
            for c in clusters
        ]

    # --- seed peers ---

    async def UpdateSeedPeer(
        self, request: manager_pb2.UpdateSeedPeerRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> manager_pb2.SeedPeer:
        try:
            hostname, ip = _hostname(request.hostname), _ip(request.ip)
            port, download_port = _port(request.port), _port(request.download_port, "download_port")
            cluster_id = _cluster_id(request.seed_peer_cluster_id, "seed_peer_cluster_id")
            idc, location = _text(request.idc, "idc"), _text(request.location, "location")
            kind = request.type or "super"
            if kind != "super":
                raise BadRequest(f"type {kind[:32]!r} is not a seed peer type (super)")
        except BadRequest as exc:
            await self._abort(context, exc)
            raise
        await self._self_only(context, ROLE_SEED_PEER, hostname, ip, "UpdateSeedPeer")
        async with self.ctx.sessions() as session:
            cluster = await session.get(models.SeedPeerCluster, cluster_id)
            if cluster is None:
                await self._abort(context, NotFound(f"seed peer cluster {cluster_id} not found"))
            row = await self._seed_peer(session, hostname, ip, cluster_id)
            if row is None:
                row = models.SeedPeer(hostname=hostname, ip=ip, seed_peer_cluster_id=cluster_id)
                session.add(row)
            row.type, row.port, row.download_port, row.idc, row.location = kind, port, download_port, idc, location
            await session.commit()
            log.info("seed peer updated", extra={"hostname": hostname, "ip": ip, "cluster": cluster_id})
            return seed_peer_pb(row, cluster)

    @staticmethod
    async def _seed_peer(session: AsyncSession, hostname: str, ip: str, cluster_id: int) -> models.SeedPeer | None:
        return await session.scalar(
            select(models.SeedPeer).where(
                models.SeedPeer.hostname == hostname,
                models.SeedPeer.ip == ip,
                models.SeedPeer.seed_peer_cluster_id == cluster_id,
            )
        )

    async def GetSeedPeer(
        self, request: manager_pb2.GetSeedPeerRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> manager_pb2.SeedPeer:
        hostname, ip, cluster_id = await self._instance_key(
            context, request.hostname, request.ip, request.seed_peer_cluster_id, "seed_peer_cluster_id"
        )
        await self._member(context, "GetSeedPeer")
        async with self.ctx.sessions() as session:
            row = await self._seed_peer(session, hostname, ip, cluster_id)
            if row is None:
                await self._abort(context, NotFound(f"seed peer {hostname}/{ip} of cluster {cluster_id} not found"))
            assert row is not None
            return seed_peer_pb(row, await session.get(models.SeedPeerCluster, cluster_id))

    async def ListSeedPeers(
        self, request: manager_pb2.ListSeedPeersRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> manager_pb2.ListSeedPeersResponse:
        await self._member(context, "ListSeedPeers")
        async with self.ctx.sessions() as session:
            rows = await session.scalars(
                select(models.SeedPeer)
                .where(models.SeedPeer.state == models.STATE_ACTIVE)
                .options(selectinload(models.SeedPeer.seed_peer_cluster))
                .order_by(models.SeedPeer.id)
            )
            return manager_pb2.ListSeedPeersResponse(
                seed_peers=[seed_peer_pb(row, row.seed_peer_cluster) for row in rows]
            )

    async def DeleteSeedPeer(
        self, request: manager_pb2.DeleteSeedPeerRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> empty_pb2.Empty:
        hostname, ip, cluster_id = await self._instance_key(
            context, request.hostname, request.ip, request.seed_peer_cluster_id, "seed_peer_cluster_id"
        )
        await self._self_only(context, ROLE_SEED_PEER, hostname, ip, "DeleteSeedPeer")
        async with self.ctx.sessions() as session:
            row = await self._seed_peer(session, hostname, ip, cluster_id)
            if row is None:
                await self._abort(context, NotFound(f"seed peer {hostname}/{ip} of cluster {cluster_id} not found"))
            await session.delete(row)
            await session.commit()
        return empty_pb2.Empty()

    # --- applications ---

    async def ListApplications(
        self, request: manager_pb2.ListApplicationsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> manager_pb2.ListApplicationsResponse:
        await self._member(context, "ListApplications")
        async with self.ctx.sessions() as session:
            rows = (await session.scalars(select(models.Application).order_by(models.Application.id))).all()
        out = manager_pb2.ListApplicationsResponse()
        for row in rows:
            priority = row.priority or {}
            if not priority:
                continue
            message = out.applications.add(id=row.id, name=row.name, url=row.url, bio=row.bio)
            message.priority.value = _level(priority.get("value", 0))
            for entry in priority.get("urls") or ():
                message.priority.urls.add(regex=str(entry.get("regex", "")), value=_level(entry.get("value", 0)))
        if not out.applications:
            # Dragonfly answers NOT_FOUND when no application has a priority; clients treat it as "none".
            await context.abort(grpc.StatusCode.NOT_FOUND, "no applications with a priority")
        return out

    # --- liveness ---

    async def KeepAlive(
        self,
        request_iterator: AsyncIterator[manager_pb2.KeepAliveRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> empty_pb2.Empty:
        key: tuple[Any, str, str, int] | None = None
        handler = asyncio.current_task()
        if handler is not None:
            self._keep_alives.add(handler)
        try:
            async for request in request_iterator:
                if key is None:
                    key = await self._first_keep_alive(request, context)
                elif (request.source_type, request.hostname, request.ip, request.cluster_id) != key:
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a keep-alive stream is for one instance")
                else:
                    await self._touch(key, models.STATE_ACTIVE)
        finally:
            self._keep_alives.discard(handler)
            if key is not None:
                # The stream ended (close, error, cancel): the instance is gone until it calls again.
                await self._touch(key, models.STATE_INACTIVE)
        return empty_pb2.Empty()

    async def end_keep_alives(self) -> None:
        """End every open KeepAlive stream (the manager stops): each marks its instance inactive as it ends.

        Without this a stop would wait out the gRPC server's whole grace for streams that never end on their own.
        """
        handlers = set(self._keep_alives)
        for handler in handlers:
            handler.cancel()
        if handlers:
            # Bounded: each handler's last step is one database write (its instance marked inactive).
            await asyncio.wait(handlers, timeout=_END_KEEP_ALIVES_WAIT)

    async def _first_keep_alive(
        self, request: manager_pb2.KeepAliveRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> tuple[Any, str, str, int]:
        try:
            hostname, ip = _hostname(request.hostname), _ip(request.ip)
            cluster_id = _cluster_id(request.cluster_id, "cluster_id")
            if request.source_type not in (SCHEDULER_SOURCE, SEED_PEER_SOURCE):
                raise BadRequest("source_type must be SCHEDULER_SOURCE or SEED_PEER_SOURCE")
        except BadRequest as exc:
            await self._abort(context, exc)
            raise
        role = ROLE_SCHEDULER if request.source_type == SCHEDULER_SOURCE else ROLE_SEED_PEER
        await self._self_only(context, role, hostname, ip, "KeepAlive")
        key = (request.source_type, hostname, ip, cluster_id)
        if not await self._touch(key, models.STATE_ACTIVE):
            what = "scheduler" if request.source_type == SCHEDULER_SOURCE else "seed peer"
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"{what} {hostname}/{ip} of cluster {cluster_id} not found: register first"
            )
        log.info("keep-alive started", extra={"hostname": hostname, "ip": ip, "cluster": cluster_id})
        return (request.source_type, request.hostname, request.ip, cluster_id)

    async def _touch(self, key: tuple[Any, str, str, int], state: str) -> bool:
        source, hostname, ip, cluster_id = key
        model: Any = models.Scheduler if source == SCHEDULER_SOURCE else models.SeedPeer
        cluster_column = model.scheduler_cluster_id if source == SCHEDULER_SOURCE else model.seed_peer_cluster_id
        async with self.ctx.sessions() as session:
            row = await session.scalar(
                select(model).where(model.hostname == hostname, model.ip == ip, cluster_column == cluster_id)
            )
            if row is None:
                return False
            changed = row.state != state
            row.state = state
            if state == models.STATE_ACTIVE:
                row.last_keep_alive_at = models.utcnow()
            await session.commit()
        if changed:
            self.invalidate()
        return True


def _level(value: Any) -> int:
    """Return a common.v2.Priority level (0..6) for a stored priority value."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        return 0
    top: int = max(common_pb2.Priority.values())
    return max(0, min(number, top))
