"""job.rateLimit: its bounds, and 0 meaning no limit (the limit itself is tested on the REST API)."""

from __future__ import annotations

import pytest

from dragonfly.common.errors import ConfigError
from dragonfly.manager import config
from dragonfly.manager.api.deps import Principal
from dragonfly.manager.jobs.api import JobCreationLimit


def test_a_zero_limit_is_no_limit() -> None:
    cfg = config.load(None, overrides={"job": {"rateLimit": {"perUser": 0, "total": 0}}})
    limit = JobCreationLimit(cfg.job.rate_limit)
    for _ in range(1000):
        limit.admit(Principal(1, "root", "session", frozenset()))


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"perUser": -1}, "perUser and total must be >= 0"),
        ({"total": -5}, "perUser and total must be >= 0"),
        ({"window": "0s"}, "window must be between 1s and 1d"),
        ({"window": "2d"}, "window must be between 1s and 1d"),
    ],
)
def test_bad_limits_are_refused_naming_the_key(section: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=rf"job\.rateLimit.*{message}"):
        config.load(None, overrides={"job": {"rateLimit": section}})


def test_the_defaults() -> None:
    limits = config.load(None).job.rate_limit
    assert (limits.per_user, limits.total, limits.window) == (100, 300, 60)
