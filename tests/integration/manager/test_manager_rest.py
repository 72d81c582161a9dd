"""REST contract of the manager: auth, roles, tokens, CRUD, pagination, filters, validation, error shape."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select

from dragonfly.manager import models
from tests.integration.manager.conftest import API

CLUSTERS = "/api/v1/scheduler-clusters"
#: The MySQL smoke subset: these run on MariaDB too (the rest on SQLite and PostgreSQL only).
ALL_DATABASES = pytest.mark.parametrize("api", ["sqlite", "postgres", "mysql"], indirect=True)


async def test_every_api_route_needs_a_token(api: API) -> None:
    spec = (await api.client.get("/api/v1/openapi.json")).json()
    assert spec["info"]["title"] == "Dragonfly manager"
    for path, methods in spec["paths"].items():
        if path == "/api/v1/users/signin":
            continue
        for method in methods:
            url = path.replace("{ident}", "1").replace("{role}", "guest")
            response = await api.client.request(method.upper(), url, json={})
            assert response.status_code == 401, (method, path, response.text)
            assert response.headers["www-authenticate"].startswith("Bearer")
            assert "message" in response.json()


async def test_signin_wrong_password_then_rate_limited(api: API) -> None:
    for _ in range(3):
        response = await api.client.post("/api/v1/users/signin", json={"name": "root", "password": "wrong-one"})
        assert response.status_code == 401
        assert response.json() == {"message": "wrong user name or password"}
    response = await api.client.post("/api/v1/users/signin", json={"name": "root", "password": "root-password-1"})
    assert response.status_code == 429
    assert int(response.headers["retry-after"]) >= 1
    # A nonexistent user is answered the same way (no user enumeration).
    response = await api.client.post("/api/v1/users/signin", json={"name": "nobody", "password": "x"})
    assert response.status_code == 401


async def test_validation_errors_do_not_echo_secrets(api: API) -> None:
    response = await api.client.post("/api/v1/users/signin", json={"name": "root", "password": "p" * 500})
    assert response.status_code == 422
    assert "p" * 200 not in response.text
    assert response.json()["message"] == "invalid request"


@ALL_DATABASES
async def test_cluster_crud_pagination_and_filters(api: API) -> None:
    root = await api.signin()
    for i in range(12):
        body = {"name": f"c-{i}", "scopes": {"cidrs": [f"10.{i}.0.0/16"], "hostnames": ["^node-.*$"]}}
        response = await api.client.post(CLUSTERS, headers=root, json=body)
        assert response.status_code == 201, response.text
    response = await api.client.get(CLUSTERS, headers=root, params={"page": 2, "per_page": 5})
    assert response.status_code == 200
    assert [c["name"] for c in response.json()] == ["c-4", "c-5", "c-6", "c-7", "c-8"]
    assert response.headers["x-total-count"] == "13"
    link = response.headers["link"]
    assert 'page=1&per_page=5>; rel="first"' in link
    assert 'page=3&per_page=5>; rel="next"' in link
    assert 'page=3&per_page=5>; rel="last"' in link
    response = await api.client.get(CLUSTERS, headers=root, params={"name": "c-7"})
    assert [c["name"] for c in response.json()] == ["c-7"]
    cluster = response.json()[0]
    response = await api.client.patch(
        f"{CLUSTERS}/{cluster['id']}", headers=root, json={"config": {"candidate_parent_limit": 5}, "is_default": True}
    )
    assert response.status_code == 200, response.text
    assert response.json()["config"] == {"candidate_parent_limit": 5}
    default = [
        c for c in (await api.client.get(CLUSTERS, headers=root, params={"per_page": 100})).json() if c["is_default"]
    ]
    assert [c["name"] for c in default] == ["c-7"]
    response = await api.client.delete(f"{CLUSTERS}/{cluster['id']}", headers=root)
    assert response.status_code == 204
    response = await api.client.get(f"{CLUSTERS}/{cluster['id']}", headers=root)
    assert response.status_code == 404
    assert response.json() == {"message": f"scheduler cluster {cluster['id']} not found"}


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"name": "a b"}, ["body", "name"]),
        ({"name": "x" * 300}, ["body", "name"]),
        ({"name": "ok", "unknown": 1}, ["body", "unknown"]),
        ({"name": "ok", "config": {"candidate_parent_limit": 0}}, ["body", "config", "candidate_parent_limit"]),
        ({"name": "ok", "scopes": {"cidrs": ["10.0.0.0/33"]}}, ["body", "scopes", "cidrs", "0"]),
        ({"name": "ok", "scopes": {"hostnames": ["("]}}, ["body", "scopes", "hostnames", "0"]),
        ({"name": "ok'; DROP TABLE scheduler_cluster; --"}, ["body", "name"]),
        ({"name": "ok", "bio": "b" * 5000}, ["body", "bio"]),
        # Found by the OpenAPI property run: an id beyond 64 bits was a 500 from the database driver.
        ({"name": "ok", "seed_peer_cluster_ids": [2**64]}, ["body", "seed_peer_cluster_ids", "0"]),
    ],
)
async def test_bad_cluster_bodies_get_422(api: API, body: dict[str, object], where: list[str]) -> None:
    root = await api.signin()
    response = await api.client.post(CLUSTERS, headers=root, json=body)
    assert response.status_code == 422, response.text
    assert where in [e["loc"] for e in response.json()["errors"]]


async def test_scope_patterns_are_re2(api: API) -> None:
    # Host names from daemons meet these patterns (the searcher), so they are RE2: linear time, no backreferences.
    root = await api.signin()
    body = {"name": "ok", "scopes": {"hostnames": [r"^(node)-\1$"]}}
    response = await api.client.post(CLUSTERS, headers=root, json=body)
    assert response.status_code == 422, response.text
    [error] = response.json()["errors"]
    assert error["loc"] == ["body", "scopes", "hostnames", "0"]
    assert "is not a regular expression RE2 accepts (invalid escape sequence: \\1)" in error["msg"]
    body = {"name": "ok", "scopes": {"hostnames": [r"(a+)+$", r"^node-\d+$"]}}
    assert (await api.client.post(CLUSTERS, headers=root, json=body)).status_code == 201


@ALL_DATABASES
async def test_conflicts_bad_json_oversized_bodies_and_unknown_routes(api: API) -> None:
    root = await api.signin()
    response = await api.client.post(CLUSTERS, headers=root, json={"name": "cluster-1"})
    assert response.status_code == 409
    assert "conflict" in response.json()["message"]
    response = await api.client.post(
        CLUSTERS, headers={**root, "content-type": "application/json"}, content=b"{not json"
    )
    assert response.status_code == 422
    response = await api.client.post(CLUSTERS, headers=root, json={"name": "big", "bio": "x" * 100_000})
    assert response.status_code == 413
    assert "larger than" in response.json()["message"]
    response = await api.client.get("/api/v1/no-such-thing", headers=root)
    assert response.status_code == 404
    response = await api.client.get(f"{CLUSTERS}/{2**64}", headers=root)
    assert response.status_code == 422
    response = await api.client.post(CLUSTERS, headers=root, json={"name": "s", "seed_peer_cluster_ids": [99]})
    assert response.status_code == 422
    assert response.json() == {"message": "seed peer cluster 99 not found"}


async def test_guest_reads_but_cannot_write(api: API) -> None:
    root = await api.signin()
    guest = await api.make_user(root, "alice", ["guest"])
    assert (await api.client.get(CLUSTERS, headers=guest)).status_code == 200
    response = await api.client.post(CLUSTERS, headers=guest, json={"name": "mine"})
    assert response.status_code == 403
    assert response.json() == {"message": "permission denied: write on scheduler-clusters"}
    for method, url, body in [
        ("POST", "/api/v1/users", {"name": "bob", "password": "bob-password"}),
        ("PATCH", f"{CLUSTERS}/1", {"bio": "x"}),
        ("DELETE", f"{CLUSTERS}/1", None),
        ("POST", "/api/v1/schedulers", {"hostname": "s", "ip": "10.0.0.1", "port": 8002, "scheduler_cluster_id": 1}),
        ("POST", "/api/v1/applications", {"name": "a", "priority": {"value": 1}}),
        ("POST", "/api/v1/roles", {"name": "r"}),
        ("PUT", "/api/v1/users/2/roles/root", None),
        ("PATCH", "/api/v1/users/2", {"state": "disable"}),
        ("POST", "/api/v1/users/1/reset_password", {"new_password": "hijacked-pw"}),
    ]:
        response = await api.client.request(method, url, headers=guest, json=body)
        assert response.status_code == 403, (method, url, response.text)
    # Their own profile and password are theirs.
    me = (await api.client.get("/api/v1/users/me", headers=guest)).json()
    assert me["roles"] == ["guest"]
    response = await api.client.patch(f"/api/v1/users/{me['id']}", headers=guest, json={"bio": "hi"})
    assert response.status_code == 200
    response = await api.client.post(
        f"/api/v1/users/{me['id']}/reset_password",
        headers=guest,
        json={"old_password": "alice-password", "new_password": "alice-password-2"},
    )
    assert response.status_code == 204
    # Changing the password ended the session.
    assert (await api.client.get(CLUSTERS, headers=guest)).status_code == 401


@ALL_DATABASES
async def test_personal_access_tokens_are_hashed_scoped_expiring_revocable(api: API) -> None:
    root = await api.signin()
    created = await api.make_token(root, ["cluster"])
    token = created["token"]
    assert token.startswith("dfp_")
    assert created["token_prefix"] == token[:10]
    async with api.ctx.sessions() as session:
        stored = await session.scalar(select(models.PersonalAccessToken))
        assert stored is not None
        assert token not in (stored.token_hash, stored.token_prefix)
    pat = {"Authorization": f"Bearer {token}"}
    assert (await api.client.post(CLUSTERS, headers=pat, json={"name": "by-pat"})).status_code == 201
    # The query parameter works too (Dragonfly's ?access_token=).
    assert (await api.client.get(CLUSTERS, params={"access_token": token})).status_code == 200
    # Outside its scope: users, tokens, applications.
    response = await api.client.get("/api/v1/users", headers=pat)
    assert response.status_code == 403
    assert "scope" in response.json()["message"]
    assert (await api.client.get("/api/v1/applications", headers=pat)).status_code == 403
    assert (await api.client.get("/api/v1/personal-access-tokens", headers=pat)).status_code == 403
    # The list shows metadata, never the secret.
    listed = (await api.client.get("/api/v1/personal-access-tokens", headers=root)).json()
    assert token not in str(listed)
    assert listed[0]["id"] == created["id"]
    # Revoked.
    response = await api.client.patch(
        f"/api/v1/personal-access-tokens/{created['id']}", headers=root, json={"state": "inactive"}
    )
    assert response.status_code == 200
    response = await api.client.get(CLUSTERS, headers=pat)
    assert response.status_code == 401
    assert "revoked" in response.json()["message"]
    # Expired.
    other = await api.make_token(root, ["cluster"])
    async with api.ctx.sessions() as session:
        row = await session.get(models.PersonalAccessToken, other["id"])
        assert row is not None
        row.expired_at = models.utcnow() - dt.timedelta(seconds=1)
        await session.commit()
    response = await api.client.get(CLUSTERS, headers={"Authorization": f"Bearer {other['token']}"})
    assert response.status_code == 401
    assert "expired" in response.json()["message"]
    # Garbage and a past expiry.
    assert (await api.client.get(CLUSTERS, headers={"Authorization": "Bearer dfp_nope"})).status_code == 401
    assert (await api.client.get(CLUSTERS, headers={"Authorization": "Bearer dfs_nope"})).status_code == 401
    past = (dt.datetime.now(dt.UTC) - dt.timedelta(days=1)).isoformat()
    response = await api.client.post(
        "/api/v1/personal-access-tokens", headers=root, json={"name": "p", "scopes": ["job"], "expired_at": past}
    )
    assert response.status_code == 422


async def test_guest_token_cannot_write_and_tokens_of_others_are_hidden(api: API) -> None:
    root = await api.signin()
    guest = await api.make_user(root, "carol", ["guest"])
    created = await api.make_token(guest, ["cluster"])
    pat = {"Authorization": f"Bearer {created['token']}"}
    assert (await api.client.get(CLUSTERS, headers=pat)).status_code == 200
    assert (await api.client.post(CLUSTERS, headers=pat, json={"name": "nope"})).status_code == 403
    root_token = await api.make_token(root, ["cluster"])
    response = await api.client.delete(f"/api/v1/personal-access-tokens/{root_token['id']}", headers=guest)
    assert response.status_code == 404
    response = await api.client.post(
        "/api/v1/personal-access-tokens",
        headers=guest,
        json={"name": "x", "scopes": ["cluster"], "expired_at": "2099-01-01T00:00:00Z", "user_id": 1},
    )
    assert response.status_code == 403


async def test_signout_and_disabled_users(api: API) -> None:
    root = await api.signin()
    dave = await api.make_user(root, "dave", ["guest"])
    assert (await api.client.post("/api/v1/users/signout", headers=dave)).status_code == 204
    assert (await api.client.get(CLUSTERS, headers=dave)).status_code == 401
    dave = await api.signin("dave", "dave-password")
    me = (await api.client.get("/api/v1/users/me", headers=dave)).json()
    assert (
        await api.client.patch(f"/api/v1/users/{me['id']}", headers=root, json={"state": "disable"})
    ).status_code == 200
    assert (await api.client.get(CLUSTERS, headers=dave)).status_code == 401
    response = await api.client.post("/api/v1/users/signin", json={"name": "dave", "password": "dave-password"})
    assert response.status_code == 403
    # The last root keeps its role.
    response = await api.client.delete("/api/v1/users/1/roles/root", headers=root)
    assert response.status_code == 409


@ALL_DATABASES
async def test_schedulers_seed_peers_applications(api: API) -> None:
    root = await api.signin()
    body = {"hostname": "sched-1", "ip": "10.0.0.1", "port": 8002, "scheduler_cluster_id": 1}
    response = await api.client.post("/api/v1/schedulers", headers=root, json=body)
    assert response.status_code == 201, response.text
    assert response.json()["state"] == "inactive"
    response = await api.client.post("/api/v1/schedulers", headers=root, json={**body, "scheduler_cluster_id": 7})
    assert response.status_code == 422
    response = await api.client.post("/api/v1/schedulers", headers=root, json={**body, "ip": "10.0.0.300"})
    assert response.status_code == 422
    listed = await api.client.get("/api/v1/schedulers", headers=root, params={"ip": "10.0.0.1", "state": "inactive"})
    assert [s["hostname"] for s in listed.json()] == ["sched-1"]
    assert (await api.client.get("/api/v1/schedulers", headers=root, params={"state": "bogus"})).status_code == 422
    seed = {"hostname": "seed-1", "ip": "10.0.0.2", "port": 4000, "download_port": 4005, "seed_peer_cluster_id": 1}
    assert (await api.client.post("/api/v1/seed-peers", headers=root, json=seed)).status_code == 201
    app = {"name": "d7y", "priority": {"value": 3, "urls": [{"regex": "^https://x/", "value": 5}]}}
    response = await api.client.post("/api/v1/applications", headers=root, json=app)
    assert response.status_code == 201, response.text
    assert response.json()["user_id"] == 1
    bad = {"name": "d7y-2", "priority": {"value": 99}}
    assert (await api.client.post("/api/v1/applications", headers=root, json=bad)).status_code == 422


@ALL_DATABASES
async def test_audit_log_records_writes_without_secrets(api: API) -> None:
    root = await api.signin()
    await api.client.post(CLUSTERS, headers=root, json={"name": "audited"})
    await api.client.post(CLUSTERS, headers=root, json={"name": "bad name"})
    await api.client.post("/api/v1/users/signin", json={"name": "root", "password": "not-the-password"})
    guest = await api.make_user(root, "erin", ["guest"])
    rows = (await api.client.get("/api/v1/audits", headers=guest, params={"per_page": 100})).json()
    seen = [(r["actor_type"], r["actor_name"], r["operation"], r["path"], r["status_code"], r["state"]) for r in rows]
    assert ("USER", "root", "POST", CLUSTERS, 201, "SUCCESS") in seen
    assert ("USER", "root", "POST", CLUSTERS, 422, "FAILURE") in seen
    assert ("UNKNOWN", "", "POST", "/api/v1/users/signin", 401, "FAILURE") in seen
    assert "not-the-password" not in str(rows)
    assert rows[0]["id"] > rows[-1]["id"]
    failures = (await api.client.get("/api/v1/audits", headers=guest, params={"state": "FAILURE"})).json()
    assert {r["state"] for r in failures} == {"FAILURE"}
    # Reads are not recorded; a guest cannot delete the log (there is no route).
    assert all(r["operation"] != "GET" for r in rows)
    assert (await api.client.delete("/api/v1/audits/1", headers=root)).status_code in (404, 405)


INJECTIONS = [
    "'; DROP TABLE scheduler_cluster; --",
    "<script>alert(1)</script>",
    "a\x00b",
    "../../etc/passwd",
    "${jndi:x}",
]


async def test_every_string_field_refuses_oversized_and_odd_values_cleanly(api: API) -> None:
    """Each string field of each create body, at 5,000 characters and with injection-style values: 4xx or a clean
    success, never 5xx; the tables are intact afterwards."""
    root = await api.signin()
    spec = (await api.client.get("/api/v1/openapi.json")).json()
    schemas = spec["components"]["schemas"]

    def resolve(node: dict[str, object]) -> dict[str, object]:
        ref = node.get("$ref")
        return schemas[str(ref).rsplit("/", 1)[1]] if isinstance(ref, str) else node

    valid = {
        "/api/v1/scheduler-clusters": {"name": "c"},
        "/api/v1/seed-peer-clusters": {"name": "s"},
        "/api/v1/schedulers": {"hostname": "h", "ip": "10.0.0.1", "port": 8002, "scheduler_cluster_id": 1},
        "/api/v1/seed-peers": {
            "hostname": "h",
            "ip": "10.0.0.2",
            "port": 4000,
            "download_port": 4005,
            "seed_peer_cluster_id": 1,
        },
        "/api/v1/applications": {"name": "a", "priority": {"value": 1}},
        "/api/v1/users": {"name": "u", "password": "u-password"},
        "/api/v1/roles": {"name": "r"},
        "/api/v1/personal-access-tokens": {"name": "t", "scopes": ["cluster"], "expired_at": "2099-01-01T00:00:00Z"},
    }
    checked = 0
    for path, base in valid.items():
        body_schema = resolve(spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"])
        for field, prop in dict(body_schema["properties"]).items():  # type: ignore[call-overload]
            kinds = {p.get("type") for p in prop.get("anyOf", [prop])}
            if "string" not in kinds or prop.get("format") == "date-time":
                continue
            for value in ["x" * 5000, *INJECTIONS]:
                response = await api.client.post(path, headers=root, json={**base, field: value})
                assert response.status_code < 500, (path, field, value[:20], response.text)
                assert "message" in response.json() or response.status_code < 300
                if value == "x" * 5000:
                    assert response.status_code == 422, (path, field)
                if response.status_code < 300:
                    await api.client.delete(f"{path}/{response.json()['id']}", headers=root)
                checked += 1
    assert checked > 100
    listed = await api.client.get(CLUSTERS, headers=root)
    assert listed.status_code == 200
    assert [c["name"] for c in listed.json()] == ["cluster-1"]


async def test_configs_and_scheduler_features(api: API) -> None:
    root = await api.signin()
    response = await api.client.post(
        "/api/v1/configs", headers=root, json={"name": "gc", "value": '{"audit":{"ttl":1}}'}
    )
    assert response.status_code == 201, response.text
    listed = await api.client.get("/api/v1/configs", headers=root, params={"name": "gc"})
    assert [c["value"] for c in listed.json()] == ['{"audit":{"ttl":1}}']
    features = await api.client.get("/api/v1/scheduler-features", headers=root)
    assert features.json() == ["schedule", "preheat"]
    audits = (await api.client.get("/api/v1/audits", headers=root, params={"operation": "POST"})).json()
    assert ("USER", "root", "/api/v1/users/signin", 200) in [
        (a["actor_type"], a["actor_name"], a["path"], a["status_code"]) for a in audits
    ]


async def test_combined_clusters_as_in_dragonfly(api: API) -> None:
    root = await api.signin()
    body = {
        "name": "east",
        "scopes": {"cidrs": ["10.1.0.0/16"]},
        "scheduler_cluster_config": {"candidate_parent_limit": 4},
        "seed_peer_cluster_config": {"load_limit": 300},
        "peer_cluster_config": {"load_limit": 50},
        "is_default": True,
    }
    created = await api.client.post("/api/v1/clusters", headers=root, json=body)
    assert created.status_code == 201, created.text
    cluster = created.json()
    assert cluster["scheduler_cluster_id"] == cluster["id"]
    assert cluster["seed_peer_cluster_config"] == {"load_limit": 300}
    seed = await api.client.get(f"/api/v1/seed-peer-clusters/{cluster['seed_peer_cluster_id']}", headers=root)
    assert seed.json()["scheduler_cluster_ids"] == [cluster["id"]]
    # Through the Open API with a token of the cluster scope.
    pat = {"Authorization": f"Bearer {(await api.make_token(root, ['cluster']))['token']}"}
    listed = await api.client.get("/oapi/v1/clusters", headers=pat)
    assert [c["name"] for c in listed.json()] == ["cluster-1", "east"]
    assert [c["is_default"] for c in listed.json()] == [False, True]
    changed = await api.client.patch(
        f"/oapi/v1/clusters/{cluster['id']}", headers=pat, json={"peer_cluster_config": {"load_limit": 60}}
    )
    assert changed.json()["peer_cluster_config"] == {"load_limit": 60}
    assert (await api.client.delete(f"/api/v1/clusters/{cluster['id']}", headers=root)).status_code == 204
    gone = await api.client.get(f"/api/v1/seed-peer-clusters/{cluster['seed_peer_cluster_id']}", headers=root)
    assert gone.status_code == 404
    assert (await api.client.get("/oapi/v1/clusters", headers={"Authorization": "Bearer dfp_x"})).status_code == 401
