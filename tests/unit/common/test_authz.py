"""Authorizer decisions with a stand-in gRPC context (the real servers are exercised by the e2e tests)."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from dragonfly.common import pki
from dragonfly.common.authz import Authorizer


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class Context:
    """What grpc.aio's ServicerContext offers that the Authorizer uses: auth_context() and abort()."""

    def __init__(self, pem: bytes | None) -> None:
        self._auth: dict[str, list[bytes]] = {"x509_pem_cert": [pem]} if pem else {}

    def auth_context(self) -> dict[str, list[bytes]]:
        return self._auth

    async def abort(self, code: grpc.StatusCode, details: str) -> Any:
        raise Aborted(code, details)


@pytest.fixture(scope="module")
def certs() -> dict[str, bytes]:
    ca = pki.create_ca("authz")
    return {
        "peer-1": pki.issue(ca, "peer-1", ips=["10.0.0.1"], roles=["peer"]).cert_pem,
        "seed": pki.issue(ca, "seed", ips=["10.0.0.2"], roles=["seed-peer"]).cert_pem,
        "ops": pki.issue(ca, "ops", ips=["10.0.0.3"], roles=["manager"]).cert_pem,
        "sched": pki.issue(ca, "sched", ips=["10.0.0.4"], roles=["scheduler"]).cert_pem,
    }


async def test_roles_and_host_ownership(certs: dict[str, bytes]) -> None:
    authz = Authorizer(secure=True)
    identity = await authz.require_host(Context(certs["peer-1"]), "10.0.0.1-peer-1", "DeleteHost")
    assert identity is not None
    assert identity.common_name == "peer-1"
    with pytest.raises(Aborted) as info:
        await authz.require_host(Context(certs["peer-1"]), "10.0.0.2-seed-seed", "DeleteHost")
    assert info.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert info.value.details == (
        "DeleteHost for host '10.0.0.2-seed-seed': the certificate does not own it (caller: peer-1 (peer))"
    )
    # The manager role may act on any host; a seed owns its -seed id.
    await authz.require_host(Context(certs["ops"]), "10.0.0.1-peer-1", "DeleteHost")
    await authz.require_host(Context(certs["seed"]), "10.0.0.2-seed-seed", "DeleteHost")
    # Roles.
    await authz.require_role(Context(certs["sched"]), ("scheduler", "manager"), "DownloadTask")
    with pytest.raises(Aborted, match="DownloadTask needs a certificate with role scheduler or manager"):
        await authz.require_role(Context(certs["seed"]), ("scheduler", "manager"), "DownloadTask")


async def test_no_certificate_on_a_secure_server_is_unauthenticated() -> None:
    with pytest.raises(Aborted) as info:
        await Authorizer(secure=True).caller(Context(None))
    assert info.value.code == grpc.StatusCode.UNAUTHENTICATED


async def test_plaintext_mode_allows_everything() -> None:
    authz = Authorizer(secure=False)
    assert await authz.require_host(Context(None), "10.0.0.1-peer-1", "DeleteHost") is None
    assert await authz.require_role(Context(None), ("scheduler",), "DownloadTask") is None
