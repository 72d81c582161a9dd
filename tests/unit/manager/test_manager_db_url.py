"""database.url: a malformed one is a clear configuration error that never repeats the URL (it holds a password)."""

from __future__ import annotations

import pytest

from dragonfly.manager import config, db


@pytest.mark.parametrize(
    "url", ["postgresql//dragonfly:pw-in-url-1@db/manager", "postgresql://dragonfly:pw-in-url-1@db:notaport/manager"]
)
def test_a_malformed_database_url_is_a_clear_error_without_the_password(url: str) -> None:
    cfg = config.load(None, overrides={"database": {"url": url}})
    with pytest.raises(ValueError, match=r"database\.url: not a database URL") as caught:
        db.database_url(cfg)
    assert "pw-in-url-1" not in str(caught.value)
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


def test_a_good_url_gets_the_async_driver() -> None:
    cfg = config.load(None, overrides={"database": {"url": "postgresql://dragonfly:pw@db:5432/manager"}})
    assert db.database_url(cfg).drivername == "postgresql+asyncpg"
