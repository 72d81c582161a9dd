"""First-start records: the root and guest roles, the root user, the default scheduler and seed-peer clusters.

Idempotent: each record is created only when missing, so every start runs it.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dragonfly.manager import auth, models

log = logging.getLogger(__name__)

ROOT_USER = "root"
DEFAULT_CLUSTER = "cluster-1"
#: Dragonfly's defaults for the first cluster.
DEFAULT_SCHEDULER_CLUSTER_CONFIG = {"candidate_parent_limit": 3, "filter_parent_limit": 15, "job_rate_limit": 10}
DEFAULT_CLIENT_CONFIG = {"load_limit": 200}
DEFAULT_SEED_PEER_CLUSTER_CONFIG = {"load_limit": 2000}


async def _role(session: AsyncSession, name: str, description: str, grants: list[tuple[str, str]]) -> models.Role:
    role = await session.scalar(select(models.Role).where(models.Role.name == name))
    if role is None:
        role = models.Role(name=name, description=description)
        role.permissions = [models.Permission(object=o, action=a) for o, a in grants]
        session.add(role)
    return role


async def bootstrap(
    sessions: async_sessionmaker[AsyncSession], root_password: str, *, out: TextIO | None = None
) -> None:
    """Create what is missing; a generated root password is printed once on ``out`` (stderr), never logged."""
    async with sessions() as session:
        root_role = await _role(session, auth.ROLE_ROOT, "every action on every object", [("*", "*")])
        await _role(session, auth.ROLE_GUEST, "read every object", [("*", auth.ACTION_READ)])
        if await session.scalar(select(models.User).where(models.User.name == ROOT_USER)) is None:
            generated = not root_password
            password = root_password or auth.generate_password()
            if len(password) < 8:
                raise ValueError("the initial root password must be at least 8 characters")
            user = models.User(name=ROOT_USER, encrypted_password=await auth.hash_password(password))
            user.roles = [root_role]
            session.add(user)
            if generated:
                print(
                    f"manager: created user {ROOT_USER!r} with password {password} "
                    "(shown once; change it with POST /api/v1/users/<id>/reset_password)",
                    file=out or sys.stderr,
                    flush=True,
                )
            log.info("root user created", extra={"password": "generated" if generated else "operator-set"})
        if await session.scalar(select(models.SchedulerCluster).limit(1)) is None:
            seed_cluster = models.SeedPeerCluster(name=DEFAULT_CLUSTER, config=dict(DEFAULT_SEED_PEER_CLUSTER_CONFIG))
            cluster = models.SchedulerCluster(
                name=DEFAULT_CLUSTER,
                config=dict(DEFAULT_SCHEDULER_CLUSTER_CONFIG),
                client_config=dict(DEFAULT_CLIENT_CONFIG),
                seed_client_config={},
                scopes={},
                is_default=True,
            )
            cluster.seed_peer_clusters = [seed_cluster]
            session.add_all([seed_cluster, cluster])
        await session.commit()
