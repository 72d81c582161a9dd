"""Migrations: from empty to head, again (a no-op), down to empty and back, on SQLite and PostgreSQL; the schema
they build is the one the models describe."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Connection

from dragonfly.manager import db
from dragonfly.manager.models import Base
from tests.integration.manager.conftest import database_for, manager_config


def _differences(connection: Connection) -> list[object]:
    context = MigrationContext.configure(connection, opts={"compare_type": False})
    return list(compare_metadata(context, Base.metadata))


@pytest.mark.parametrize("kind", ["sqlite", "postgres", "mysql"])
async def test_migrations_up_down_up(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    database = database_for(kind, request)
    engine = db.create_engine(db.database_url(manager_config(tmp_path, database=database)), pool_size=1)
    try:
        assert await db.current_revision(engine) is None
        await db.migrate(engine)
        assert await db.current_revision(engine) == db.head_revision()
        await db.migrate(engine)
        async with engine.connect() as conn:
            tables = set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
            assert {"scheduler_cluster", "scheduler", "user", "personal_access_token", "audit"} <= tables
            assert await conn.run_sync(_differences) == []
        await db.migrate(engine, "base")
        assert await db.current_revision(engine) is None
        await db.migrate(engine)
        assert await db.current_revision(engine) == db.head_revision()
    finally:
        await engine.dispose()
