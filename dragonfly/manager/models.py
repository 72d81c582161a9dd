"""The manager's tables (SQLAlchemy 2 declarative). Schema changes go through Alembic (``migrations/``).

Names and JSON shapes follow Dragonfly's manager (``docs/reference``: scheduler_cluster, scheduler, seed_peer_cluster,
seed_peer, application, user, personal_access_token, audit) so a console or script written for one reads the other.
Unlike Dragonfly, rows are deleted, not soft-deleted, and tokens are stored as SHA-256 digests, never in clear.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, ClassVar

from sqlalchemy import JSON, Boolean, Column, DateTime, ForeignKey, Integer, String, Table, Text, UniqueConstraint
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

STATE_ACTIVE = "active"
STATE_INACTIVE = "inactive"


def utcnow() -> dt.datetime:
    """Return the current time, timezone-aware UTC."""
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """A timestamp stored as UTC; SQLite and MySQL hand back naive values, which are UTC by construction."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime stored; use timezone-aware UTC")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name in ("sqlite", "mysql") else value

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


class Base(DeclarativeBase):
    """Every table; ``Base.metadata`` is what Alembic compares against."""

    type_annotation_map: ClassVar[dict[Any, Any]] = {
        dt.datetime: UTCDateTime(),
        dict[str, Any]: JSON(),
        list[Any]: JSON(),
    }


class Timestamps:
    """``id``, ``created_at`` and ``updated_at`` as in Dragonfly's BaseModel."""

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)


seed_peer_cluster_scheduler_cluster = Table(
    "seed_peer_cluster_scheduler_cluster",
    Base.metadata,
    Column("scheduler_cluster_id", ForeignKey("scheduler_cluster.id", ondelete="CASCADE"), primary_key=True),
    Column("seed_peer_cluster_id", ForeignKey("seed_peer_cluster.id", ondelete="CASCADE"), primary_key=True),
)

user_role = Table(
    "user_role",
    Base.metadata,
    Column("user_id", ForeignKey("user.id", ondelete="CASCADE"), primary_key=True),
    Column("role_id", ForeignKey("role.id", ondelete="CASCADE"), primary_key=True),
)


class SchedulerCluster(Timestamps, Base):
    """A group of schedulers serving the hosts its scopes match."""

    __tablename__ = "scheduler_cluster"

    name: Mapped[str] = mapped_column(String(255), unique=True)
    bio: Mapped[str] = mapped_column(String(1024), default="")
    # {candidate_parent_limit, filter_parent_limit, job_rate_limit}
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # {load_limit, block_list}
    client_config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    seed_client_config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # {idc, location, cidrs[], hostnames[]}
    scopes: Mapped[dict[str, Any]] = mapped_column(default=dict)
    is_default: Mapped[bool] = mapped_column(Boolean, default=False)

    schedulers: Mapped[list[Scheduler]] = relationship(
        back_populates="scheduler_cluster", cascade="all, delete-orphan", passive_deletes=True
    )
    seed_peer_clusters: Mapped[list[SeedPeerCluster]] = relationship(
        secondary=seed_peer_cluster_scheduler_cluster, back_populates="scheduler_clusters"
    )


class Scheduler(Timestamps, Base):
    """One scheduler process, registered by UpdateScheduler; state follows its keep-alive."""

    __tablename__ = "scheduler"
    __table_args__ = (UniqueConstraint("hostname", "ip", "scheduler_cluster_id"),)

    hostname: Mapped[str] = mapped_column(String(255))
    idc: Mapped[str] = mapped_column(String(1024), default="")
    location: Mapped[str] = mapped_column(String(1024), default="")
    ip: Mapped[str] = mapped_column(String(64))
    port: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), default=STATE_INACTIVE, index=True)
    features: Mapped[list[Any]] = mapped_column(default=list)
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    last_keep_alive_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    scheduler_cluster_id: Mapped[int] = mapped_column(ForeignKey("scheduler_cluster.id", ondelete="CASCADE"))

    scheduler_cluster: Mapped[SchedulerCluster] = relationship(back_populates="schedulers")


class SeedPeerCluster(Timestamps, Base):
    """A group of seed peers; linked to the scheduler clusters whose schedulers may trigger them."""

    __tablename__ = "seed_peer_cluster"

    name: Mapped[str] = mapped_column(String(255), unique=True)
    bio: Mapped[str] = mapped_column(String(1024), default="")
    # {load_limit, block_list}
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)

    seed_peers: Mapped[list[SeedPeer]] = relationship(
        back_populates="seed_peer_cluster", cascade="all, delete-orphan", passive_deletes=True
    )
    scheduler_clusters: Mapped[list[SchedulerCluster]] = relationship(
        secondary=seed_peer_cluster_scheduler_cluster, back_populates="seed_peer_clusters"
    )


class SeedPeer(Timestamps, Base):
    """One seed peer (dfdaemon in seed mode), registered by UpdateSeedPeer."""

    __tablename__ = "seed_peer"
    __table_args__ = (UniqueConstraint("hostname", "ip", "seed_peer_cluster_id"),)

    hostname: Mapped[str] = mapped_column(String(255))
    type: Mapped[str] = mapped_column(String(32), default="super")
    idc: Mapped[str] = mapped_column(String(1024), default="")
    location: Mapped[str] = mapped_column(String(1024), default="")
    ip: Mapped[str] = mapped_column(String(64))
    port: Mapped[int] = mapped_column(Integer)
    download_port: Mapped[int] = mapped_column(Integer, default=0)
    object_storage_port: Mapped[int] = mapped_column(Integer, default=0)
    state: Mapped[str] = mapped_column(String(16), default=STATE_INACTIVE, index=True)
    last_keep_alive_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    seed_peer_cluster_id: Mapped[int] = mapped_column(ForeignKey("seed_peer_cluster.id", ondelete="CASCADE"))

    seed_peer_cluster: Mapped[SeedPeerCluster] = relationship(back_populates="seed_peers")


class Application(Timestamps, Base):
    """An application name with its download priority (``priority`` = {value, urls[{regex, value}]})."""

    __tablename__ = "application"

    name: Mapped[str] = mapped_column(String(255), unique=True)
    url: Mapped[str] = mapped_column(String(1024), default="")
    bio: Mapped[str] = mapped_column(String(1024), default="")
    priority: Mapped[dict[str, Any]] = mapped_column(default=dict)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("user.id", ondelete="SET NULL"), default=None)


class User(Timestamps, Base):
    """A person who signs in to the REST API or the console."""

    __tablename__ = "user"

    name: Mapped[str] = mapped_column(String(255), unique=True)
    email: Mapped[str] = mapped_column(String(255), default="")
    # argon2id hash (PHC string).
    encrypted_password: Mapped[str] = mapped_column(String(255))
    state: Mapped[str] = mapped_column(String(16), default="enable")
    bio: Mapped[str] = mapped_column(String(1024), default="")
    avatar: Mapped[str] = mapped_column(String(1024), default="")
    phone: Mapped[str] = mapped_column(String(64), default="")
    location: Mapped[str] = mapped_column(String(1024), default="")

    roles: Mapped[list[Role]] = relationship(secondary=user_role, back_populates="users", lazy="selectin")


class Role(Timestamps, Base):
    """A named set of permissions (root: everything; guest: read everything)."""

    __tablename__ = "role"

    name: Mapped[str] = mapped_column(String(255), unique=True)
    description: Mapped[str] = mapped_column(String(1024), default="")

    permissions: Mapped[list[Permission]] = relationship(
        back_populates="role", cascade="all, delete-orphan", passive_deletes=True, lazy="selectin"
    )
    users: Mapped[list[User]] = relationship(secondary=user_role, back_populates="roles")


class Permission(Base):
    """``action`` (read or write; ``*`` = both) on ``object`` (an API resource name; ``*`` = every one)."""

    __tablename__ = "permission"
    __table_args__ = (UniqueConstraint("role_id", "object", "action"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    role_id: Mapped[int] = mapped_column(ForeignKey("role.id", ondelete="CASCADE"))
    object: Mapped[str] = mapped_column(String(255))
    action: Mapped[str] = mapped_column(String(16))

    role: Mapped[Role] = relationship(back_populates="permissions")


class Session(Base):
    """A sign-in session; the client holds the token, the table only its SHA-256."""

    __tablename__ = "session"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(index=True)


class PersonalAccessToken(Timestamps, Base):
    """A long-lived token for scripts and Harbor: scoped (``cluster``, ``job``, ...), expiring, revocable."""

    __tablename__ = "personal_access_token"

    name: Mapped[str] = mapped_column(String(255))
    bio: Mapped[str] = mapped_column(String(1024), default="")
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # The first characters of the token, so a user can tell tokens apart without the secret.
    token_prefix: Mapped[str] = mapped_column(String(16))
    scopes: Mapped[list[Any]] = mapped_column(default=list)
    state: Mapped[str] = mapped_column(String(16), default=STATE_ACTIVE)
    expired_at: Mapped[dt.datetime] = mapped_column()
    last_used_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    user_id: Mapped[int] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"), index=True)


class Audit(Base):
    """One change made through the API: who, what, when and how it ended."""

    __tablename__ = "audit"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # USER, PAT or UNKNOWN
    actor_type: Mapped[str] = mapped_column(String(16))
    actor_name: Mapped[str] = mapped_column(String(255), default="")
    event_type: Mapped[str] = mapped_column(String(32), default="API")
    operation: Mapped[str] = mapped_column(String(16))
    path: Mapped[str] = mapped_column(String(1024))
    status_code: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))
    operated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
    detail: Mapped[str] = mapped_column(Text, default="")


class ConfigEntry(Timestamps, Base):
    """A named setting stored in the database (Dragonfly's ``config`` table, e.g. GC TTLs)."""

    __tablename__ = "config"

    name: Mapped[str] = mapped_column(String(255), unique=True)
    value: Mapped[str] = mapped_column(Text, default="")
    bio: Mapped[str] = mapped_column(String(1024), default="")
