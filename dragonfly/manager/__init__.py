"""The manager: clusters, schedulers, seed peers, applications, users, roles, tokens (``docs/manager.md``).

REST ``/api/v1`` (FastAPI on uvicorn), gRPC ``manager.v2`` for schedulers and daemons, SQLAlchemy 2 with Alembic
migrations over SQLite (default), PostgreSQL or MySQL. Nothing here is imported by ``import dragonfly``.
"""
