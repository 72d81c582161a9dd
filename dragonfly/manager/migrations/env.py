"""Alembic environment: the caller (``dragonfly.manager.db.migrate``) hands in an open connection."""

from __future__ import annotations

from alembic import context

import dragonfly.manager.jobs.models  # noqa: F401  (the job table, for autogenerate)
from dragonfly.manager.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through dragonfly.manager.db.migrate (an open connection is required)")
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    # SQLite cannot ALTER most things; batch mode copies the table instead.
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
