"""The manager's REST surface read as a hostile user would: a token that widens itself, a job-scoped token that
edits its owner, a session that survives sign-out, secrets echoed in headers or logs (SQLite and PostgreSQL)."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy import text

from .conftest import API

TOKENS = "/api/v1/personal-access-tokens"


async def test_a_token_cannot_widen_its_own_scopes_or_revive_a_wider_token(api: API) -> None:
    root = await api.signin()
    narrow = await api.make_token(root, ["user"])
    wide = await api.make_token(root, ["user", "cluster", "job"])
    as_narrow = {"Authorization": f"Bearer {narrow['token']}"}

    widened = await api.client.patch(
        f"{TOKENS}/{narrow['id']}", headers=as_narrow, json={"scopes": ["user", "cluster"]}
    )
    assert widened.status_code == 403, widened.text
    assert "scopes it does not have" in widened.json()["message"]
    assert (await api.client.get("/api/v1/clusters", headers=as_narrow)).status_code == 403

    # Revoking a wider token is fine; bringing it back is what the wider scopes would take.
    revoked = await api.client.patch(f"{TOKENS}/{wide['id']}", headers=as_narrow, json={"state": "inactive"})
    assert revoked.status_code == 200, revoked.text
    revived = await api.client.patch(f"{TOKENS}/{wide['id']}", headers=as_narrow, json={"state": "active"})
    assert revived.status_code == 403
    assert (
        await api.client.get("/api/v1/clusters", headers={"Authorization": f"Bearer {wide['token']}"})
    ).status_code == 401

    # Narrowing, and a session (not bound by scopes), still work.
    assert (await api.client.patch(f"{TOKENS}/{narrow['id']}", headers=as_narrow, json={"bio": "n"})).status_code == 200
    again = await api.client.patch(f"{TOKENS}/{wide['id']}", headers=root, json={"state": "active"})
    assert again.status_code == 200, again.text


async def test_a_job_scoped_token_cannot_edit_its_owners_profile(api: API) -> None:
    root = await api.signin()
    harbor = await api.make_token(root, ["job"])
    me = (await api.client.get("/api/v1/users/me", headers=root)).json()
    response = await api.client.patch(
        f"/api/v1/users/{me['id']}",
        headers={"Authorization": f"Bearer {harbor['token']}"},
        json={"email": "attacker@example.com"},
    )
    assert response.status_code == 403
    assert "'user' scope" in response.json()["message"]
    assert (await api.client.get("/api/v1/users/me", headers=root)).json()["email"] == me["email"]
    user_scoped = await api.make_token(root, ["user"])
    response = await api.client.patch(
        f"/api/v1/users/{me['id']}", headers={"Authorization": f"Bearer {user_scoped['token']}"}, json={"bio": "ok"}
    )
    assert response.status_code == 200, response.text


async def test_signout_with_the_query_parameter_ends_the_session(api: API) -> None:
    session_token = (await api.signin())["Authorization"].removeprefix("Bearer ")
    out = await api.client.post("/api/v1/users/signout", params={"access_token": session_token})
    assert out.status_code == 204
    assert (await api.client.get("/api/v1/clusters", params={"access_token": session_token})).status_code == 401


async def test_link_headers_never_repeat_the_access_token(api: API) -> None:
    root = await api.signin()
    token = (await api.make_token(root, ["cluster", "user"]))["token"]
    for path in ("/api/v1/clusters", "/api/v1/scheduler-clusters", TOKENS):
        response = await api.client.get(path, params={"access_token": token, "per_page": 1, "name": "x"})
        assert response.status_code == 200, response.text
        assert "rel=" in response.headers["Link"]
        assert token not in response.headers["Link"]
        assert "access_token" not in response.headers["Link"]


async def test_database_errors_in_logs_carry_no_bound_values(api: API, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    root = await api.signin()
    created = await api.client.post(
        "/api/v1/users", headers=root, json={"name": "dup", "password": "first-password-123"}
    )
    assert created.status_code == 201
    again = await api.client.post(
        "/api/v1/users", headers=root, json={"name": "dup", "password": "second-password-456"}
    )
    assert again.status_code == 409
    async with api.ctx.engine.connect() as conn:
        stored = (await conn.execute(text("SELECT encrypted_password FROM \"user\" WHERE name = 'dup'"))).scalar_one()
    logged = "\n".join(
        f"{record.getMessage()} {record.exc_text or ''} {record.exc_info or ''}" for record in caplog.records
    )
    assert "IntegrityError" in logged or "UniqueViolation" in logged or "integrity" in logged
    assert "$argon2" not in logged
    assert stored[:20] not in logged
