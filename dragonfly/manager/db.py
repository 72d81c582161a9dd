"""The database: URL from config, async engine (SQLite WAL pragmas), sessions and Alembic migrations.

Drivers: SQLite through ``aiosqlite``, PostgreSQL through ``asyncpg``, MySQL/MariaDB through ``aiomysql``. Only the
driver of the configured database is imported.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from dragonfly.manager.config import Config

log = logging.getLogger(__name__)

_ASYNC_DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg", "mysql": "mysql+aiomysql"}
_SCHEME_ALIASES = {"postgres": "postgresql", "mariadb": "mysql", "sqlite": "sqlite", "postgresql": "postgresql"}
#: Where the migration scripts live (a package path, so it works from a wheel).
MIGRATIONS = str(Path(__file__).with_name("migrations"))


def database_url(config: Config) -> URL:
    """Return the async SQLAlchemy URL of the configured database."""
    db = config.database
    if db.url:
        try:
            url = make_url(db.url)
        except (ArgumentError, ValueError):
            # The message never repeats the URL: it holds the database password.
            raise ValueError(
                "database.url: not a database URL (expected dialect://user:password@host:port/dbname)"
            ) from None
        backend = _SCHEME_ALIASES.get(url.get_backend_name(), url.get_backend_name())
        if backend not in _ASYNC_DRIVERS:
            raise ValueError(f"database.url: unsupported database {url.get_backend_name()!r}")
        return url.set(drivername=_ASYNC_DRIVERS[backend])
    kind = _SCHEME_ALIASES.get(db.type, db.type)
    if kind == "sqlite":
        path = Path(db.sqlite.path)
        if not path.is_absolute():
            path = config.data_dir / path
        return URL.create(_ASYNC_DRIVERS["sqlite"], database=str(path))
    section = db.postgres if kind == "postgresql" else db.mysql
    query = {"ssl": section.ssl_mode} if kind == "postgresql" and section.ssl_mode != "disable" else {}
    return URL.create(
        _ASYNC_DRIVERS[kind],
        username=section.user,
        password=section.password or None,
        host=section.host,
        port=section.port or (5432 if kind == "postgresql" else 3306),
        database=section.dbname,
        query=query,
    )


def create_engine(url: URL, *, wal: bool = True, pool_size: int = 10) -> AsyncEngine:
    """Return an engine; on SQLite every connection gets WAL, foreign keys and a busy timeout."""
    if url.get_backend_name() == "sqlite":
        # aiosqlite logs every statement with its bound values at DEBUG (password hashes, token digests, sealed job
        # credentials): a manager run with --log-level debug must not write those to its log.
        logging.getLogger("aiosqlite").setLevel(max(logging.INFO, logging.getLogger("aiosqlite").level))
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, connect_args={"timeout": 30}, hide_parameters=True)

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            if wal:
                cursor.execute("PRAGMA journal_mode=WAL")
                # Durable at checkpoints; a crash loses at most the last transactions, never corrupts.
                cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    # hide_parameters: a database error's text (logged) never carries the values bound to it (password hashes,
    # token digests, sealed credentials), only the SQL.
    extra: dict[str, Any] = {
        "pool_size": pool_size,
        "pool_pre_ping": True,
        "pool_recycle": 3600,
        "hide_parameters": True,
    }
    if url.get_backend_name() == "mysql":
        extra["connect_args"] = {"charset": "utf8mb4"}
    return create_async_engine(url, **extra)


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Return the session maker every request and RPC uses (no expiry on commit: objects stay readable)."""
    return async_sessionmaker(engine, expire_on_commit=False)


def _alembic_config(connection: Connection | None = None) -> Any:
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", MIGRATIONS)
    cfg.attributes["connection"] = connection
    return cfg


def _upgrade(connection: Connection, revision: str) -> None:
    from alembic import command

    if revision == "base":
        command.downgrade(_alembic_config(connection), revision)
    else:
        command.upgrade(_alembic_config(connection), revision)


def _current(connection: Connection) -> str | None:
    from alembic.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()


async def migrate(engine: AsyncEngine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (idempotent; ``base`` drops everything); one transaction where DDL allows."""
    async with engine.begin() as conn:
        before = await conn.run_sync(_current)
        await conn.run_sync(_upgrade, revision)
        after = await conn.run_sync(_current)
    if before != after:
        log.info("database migrated", extra={"from": before or "empty", "to": after})


async def current_revision(engine: AsyncEngine) -> str | None:
    """Return the schema revision of the database (None when empty)."""
    async with engine.connect() as conn:
        return await conn.run_sync(_current)


def head_revision() -> str:
    """Return the newest migration's revision id."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert head is not None
    return head
