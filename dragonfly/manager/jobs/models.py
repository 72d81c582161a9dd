"""The ``job`` table: one row per job, as Dragonfly's (``id``, ``task_id``, ``bio``, ``type``, ``state``, ``args``,
``result``, ``user_id``, timestamps) plus ``progress`` (finer than the three states Harbor accepts), ``secret``
(the credentials kept apart from ``args``, emptied when the job ends) and the target ``scheduler_cluster_ids``.

Target clusters are a JSON list rather than a link table: a job is a record of what was asked, and deleting a
cluster later must neither delete the job nor rewrite its history.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from dragonfly.manager.models import Base, Timestamps


class Job(Timestamps, Base):
    """One job (preheat)."""

    __tablename__ = "job"

    task_id: Mapped[str] = mapped_column(String(255), default="")
    bio: Mapped[str] = mapped_column(String(1024), default="")
    type: Mapped[str] = mapped_column(String(64), index=True)
    state: Mapped[str] = mapped_column(String(16), default="PENDING", index=True)
    args: Mapped[dict[str, Any]] = mapped_column(default=dict)
    result: Mapped[dict[str, Any]] = mapped_column(default=dict)
    progress: Mapped[dict[str, Any]] = mapped_column(default=dict)
    secret: Mapped[dict[str, Any]] = mapped_column(default=dict)
    scheduler_cluster_ids: Mapped[list[Any]] = mapped_column(default=list)
    user_id: Mapped[int | None] = mapped_column(
        Integer, ForeignKey("user.id", ondelete="SET NULL"), default=None, index=True
    )
