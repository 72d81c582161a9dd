"""Sign-in limits of a manager process per client address, and who may say which address a client has.

Every address of 127.0.0.0/8 is loopback on Linux, so clients bound to 127.0.0.1, .2 and .3 are three hosts to the
manager; 127.0.0.3 plays the reverse proxy named in ``server.rest.trustedProxies``.
"""

from __future__ import annotations

import http.client
import json
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from dragonfly.cli.cluster import ManagedProcess, free_ports
from tests.integration.manager.conftest import ROOT_PASSWORD

PROXY = "127.0.0.3"


@contextmanager
def _manager(tmp_path: Path, auth: dict[str, Any], trusted_proxies: list[str] | None = None) -> Iterator[int]:
    """Run a manager process with ``auth`` (and ``server.rest.trustedProxies``); yield its REST port."""
    rest, grpc_port = free_ports(2)
    rest_config: dict[str, Any] = {"addr": f"127.0.0.1:{rest}"}
    if trusted_proxies is not None:
        rest_config["trustedProxies"] = trusted_proxies
    config = {
        "server": {
            "dataDir": str(tmp_path / "data"),
            "rest": rest_config,
            "grpc": {"listenIP": "127.0.0.1", "port": {"start": grpc_port, "end": grpc_port}},
        },
        "auth": auth,
        "security": {"enable": False},
    }
    (tmp_path / "manager.yaml").write_text(yaml.safe_dump(config))
    argv = [sys.executable, "-m", "dragonfly.cli.manager", "--config", str(tmp_path / "manager.yaml")]
    with ManagedProcess("manager", argv, tmp_path / "manager.log", ready_timeout=60):
        yield rest


def _signin(
    port: int, source: str, name: str, password: str, forwarded_for: str | None = None
) -> tuple[int, dict[str, str], dict[str, Any]]:
    """POST /api/v1/users/signin from ``source``; return status, headers and the JSON body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30, source_address=(source, 0))
    try:
        headers = {"Content-Type": "application/json"}
        if forwarded_for is not None:
            headers["X-Forwarded-For"] = forwarded_for
        conn.request("POST", "/api/v1/users/signin", json.dumps({"name": name, "password": password}), headers)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, json.loads(response.read())
    finally:
        conn.close()


def test_one_address_is_locked_out_another_signs_in_and_only_trusted_proxies_name_the_client(tmp_path: Path) -> None:
    with _manager(
        tmp_path,
        {
            "rootPassword": ROOT_PASSWORD,
            "signinMaxFailures": 2,
            "signinMaxFailuresPerAddress": 3,
            "signinWindow": "10m",
        },
        trusted_proxies=[PROXY],
    ) as rest:
        # 127.0.0.1 is not a trusted proxy: its X-Forwarded-For is its own invention and changes nothing. One wrong
        # password for each of three names stays under the per-name limit (2) but reaches the address's (3).
        for name in ("alice", "bob", "carol"):
            status, _, body = _signin(rest, "127.0.0.1", name, "wrong", forwarded_for=f"10.0.0.{len(name)}")
            assert (status, body) == (401, {"message": "wrong user name or password"})
        status, headers, body = _signin(rest, "127.0.0.1", "root", ROOT_PASSWORD, forwarded_for="10.9.9.9")
        assert status == 429, body
        assert 1 <= int(headers["retry-after"]) <= 600
        assert body == {"message": f"too many failed sign-ins from 127.0.0.1; try again in {headers['retry-after']} s"}

        # Another address still signs in, with or without a header of its own.
        assert _signin(rest, "127.0.0.2", "root", ROOT_PASSWORD)[0] == 200
        assert _signin(rest, "127.0.0.2", "root", ROOT_PASSWORD, forwarded_for="127.0.0.1")[0] == 200

        # Behind the trusted proxy each client is the address the proxy appended (the rightmost untrusted hop).
        for name in ("alice", "bob", "carol"):
            assert _signin(rest, PROXY, name, "wrong", forwarded_for="10.0.0.7")[0] == 401
        status, _, body = _signin(rest, PROXY, "root", ROOT_PASSWORD, forwarded_for="10.0.0.8, 10.0.0.7")
        assert status == 429
        assert body["message"].startswith("too many failed sign-ins from 10.0.0.7;")
        # Another client behind the same proxy is not locked out with it.
        assert _signin(rest, PROXY, "root", ROOT_PASSWORD, forwarded_for="10.0.0.8")[0] == 200


def test_a_success_does_not_reset_the_address_budget(tmp_path: Path) -> None:
    with _manager(
        tmp_path, {"rootPassword": ROOT_PASSWORD, "signinMaxFailures": 5, "signinMaxFailuresPerAddress": 3}
    ) as rest:
        # An attacker with one valid account of its own cannot sign in with it between guesses to buy more.
        for name in ("alice", "bob"):
            assert _signin(rest, "127.0.0.1", name, "wrong")[0] == 401
        assert _signin(rest, "127.0.0.1", "root", ROOT_PASSWORD)[0] == 200
        assert _signin(rest, "127.0.0.1", "carol", "wrong")[0] == 401
        assert _signin(rest, "127.0.0.1", "root", ROOT_PASSWORD)[0] == 429


def test_guesses_sent_at_once_stop_at_the_limit_and_right_passwords_wait_their_turn(tmp_path: Path) -> None:
    """Each guess takes an argon2 verification; all of them sent together used to pass the check before the first
    failure was counted."""
    with _manager(
        tmp_path, {"rootPassword": ROOT_PASSWORD, "signinMaxFailures": 2, "signinMaxFailuresPerAddress": 20}
    ) as rest:
        with ThreadPoolExecutor(8) as pool:
            # Right passwords at once (CI jobs sharing an account) wait for each other's verification instead.
            results = list(pool.map(lambda _: _signin(rest, "127.0.0.1", "root", ROOT_PASSWORD)[0], range(6)))
            assert results == [200] * 6
            results = list(pool.map(lambda _: _signin(rest, "127.0.0.1", "root", "wrong")[0], range(8)))
        assert sorted(results) == [401, 401] + [429] * 6, results
        # The two failures lock the pair out; the right password waits too.
        assert _signin(rest, "127.0.0.1", "root", ROOT_PASSWORD)[0] == 429
        assert _signin(rest, "127.0.0.2", "root", ROOT_PASSWORD)[0] == 200
