"""How the HTTP backend reaches an origin: TLS verified by default, extra trust roots, the explicit insecure
option, and the SSRF guard for downloads other hosts asked for (redirects included).

The https origin is a real aiohttp server with a certificate of a CA made here (``dragonfly.common.pki``).
"""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from aiohttp import web
from cryptography.hazmat.primitives.serialization import Encoding

from dragonfly.common import pki
from dragonfly.common.netguard import AddressPolicy
from dragonfly.daemon.backends.http import HTTPBackend, OriginOptions
from dragonfly.daemon.errors import BackendError

BODY = b"origin bytes " * 1000


async def _serve(
    context: ssl.SSLContext | None, redirect_to: str = "", host: str = "127.0.0.1"
) -> tuple[web.AppRunner, str]:
    async def handle(request: web.Request) -> web.StreamResponse:
        if request.path == "/moved":
            raise web.HTTPFound(redirect_to)
        return web.Response(body=BODY)

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, 0, ssl_context=context).start()
    scheme = "https" if context else "http"
    return runner, f"{scheme}://{host}:{runner.addresses[0][1]}"


@pytest.fixture
def ca(tmp_path: Path) -> tuple[pki.CertificateAuthority, Path, ssl.SSLContext]:
    authority = pki.create_ca("origin test CA")
    ca_path, _ = authority.write(tmp_path / "ca")
    cert, key = pki.issue(authority, "origin", ips=["127.0.0.1"]).write(tmp_path, "origin")
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    return authority, ca_path, server


@pytest.fixture
async def https_origin(ca: tuple[pki.CertificateAuthority, Path, ssl.SSLContext]) -> AsyncIterator[str]:
    runner, base = await _serve(ca[2])
    yield base
    await runner.cleanup()


async def _backend(**kwargs: object) -> HTTPBackend:
    backend = HTTPBackend(
        request_header={},
        max_retries=1,
        piece_timeout=10.0,
        executor=ThreadPoolExecutor(2),
        **kwargs,  # type: ignore[arg-type]
    )
    await backend.start()
    return backend


async def test_an_unknown_ca_is_refused_with_the_host_named(https_origin: str) -> None:
    backend = await _backend()
    try:
        with pytest.raises(BackendError) as caught:
            await backend.stat(f"{https_origin}/f", {})
    finally:
        await backend.close()
    message = str(caught.value)
    assert "the TLS certificate of 127.0.0.1 could not be verified (unable to get local issuer certificate)" in message
    assert "--ca-cert" in message
    assert "insecureSkipVerify" in message
    assert "ssl:default" not in message
    assert "Cannot connect" not in message


async def test_the_configured_ca_bundle_is_trusted(
    https_origin: str, ca: tuple[pki.CertificateAuthority, Path, ssl.SSLContext]
) -> None:
    backend = await _backend(ca_cert=str(ca[1]))
    try:
        assert (await backend.stat(f"{https_origin}/f", {})).content_length == len(BODY)
    finally:
        await backend.close()


async def test_a_requests_certificate_chain_is_trusted_for_that_request_only(
    https_origin: str, ca: tuple[pki.CertificateAuthority, Path, ssl.SSLContext]
) -> None:
    der = ca[0].cert.public_bytes(Encoding.DER)
    backend = await _backend()
    try:
        stat = await backend.stat(f"{https_origin}/f", {}, OriginOptions(certificate_chain=(der,)))
        assert stat.content_length == len(BODY)
        with pytest.raises(BackendError, match="could not be verified"):
            await backend.stat(f"{https_origin}/g", {})
    finally:
        await backend.close()


async def test_insecure_is_explicit_and_logged(https_origin: str, caplog: pytest.LogCaptureFixture) -> None:
    backend = await _backend()
    try:
        assert (await backend.stat(f"{https_origin}/f", {}, OriginOptions(insecure=True))).content_length == len(BODY)
    finally:
        await backend.close()
    caplog.set_level(logging.WARNING)
    backend = await _backend(insecure_skip_verify=True)
    try:
        assert (await backend.stat(f"{https_origin}/f", {})).content_length == len(BODY)
    finally:
        await backend.close()
    assert any("insecureSkipVerify is set" in r.getMessage() for r in caplog.records)


async def test_a_guarded_download_is_refused_internal_addresses_and_redirects_to_them() -> None:
    internal, internal_base = await _serve(None)
    # The "outside" origin is allowed by the policy (127.0.0.2), its redirect target (127.0.0.1) is not.
    outside, outside_base = await _serve(None, redirect_to=f"{internal_base}/metrics", host="127.0.0.2")
    allowed = AddressPolicy.from_config(["127.0.0.2/32"])
    backend = await _backend(address_policy=allowed)
    guarded = OriginOptions(guarded=True)
    try:
        with pytest.raises(BackendError) as direct:
            await backend.stat(f"{internal_base}/metrics", {}, guarded)
        assert f"stat of {internal_base}/metrics failed: refused to connect to 127.0.0.1: a loopback address" in str(
            direct.value
        )
        with pytest.raises(BackendError, match=r"refused to connect to 127\.0\.0\.1: a loopback address"):
            await backend.stat(f"{outside_base}/moved", {}, guarded)
        # Allowed addresses work; the same URLs work for a local caller, who can reach them anyway.
        assert (await backend.stat(f"{outside_base}/f", {}, guarded)).content_length == len(BODY)
        assert (await backend.stat(f"{outside_base}/moved", {})).content_length == len(BODY)
    finally:
        await backend.close()
        await internal.cleanup()
        await outside.cleanup()


async def test_an_authorization_header_wins_over_credentials_in_the_url() -> None:
    seen: list[str | None] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        return web.Response(body=BODY)

    app = web.Application()
    app.router.add_get("/f", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://user:secret@127.0.0.1:{runner.addresses[0][1]}/f"
    backend = await _backend()
    try:
        # aiohttp refused the combination ("Cannot combine AUTHORIZATION header with AUTH argument ...").
        assert (await backend.stat(url, {"Authorization": "Bearer token"})).content_length == len(BODY)
        assert (await backend.stat(url, {})).content_length == len(BODY)
    finally:
        await backend.close()
        await runner.cleanup()
    assert seen == ["Bearer token", "Basic dXNlcjpzZWNyZXQ="]


@pytest.mark.parametrize("cut", ["reset", "close"])
async def test_a_body_cut_short_is_described_without_aiohttps_wording(cut: str, tmp_path: Path) -> None:
    async def handle(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = len(BODY)
        await response.prepare(request)
        await response.write(BODY[:1000])
        assert request.transport is not None
        request.transport.abort() if cut == "reset" else request.transport.close()
        return response

    app = web.Application()
    app.router.add_get("/f", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/f"
    backend = await _backend()
    fd = os.open(tmp_path / "content", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        with pytest.raises(BackendError) as caught:
            await backend.download_piece(url, {}, fd=fd, offset=0, length=len(BODY), buffer=bytearray(len(BODY)))
    finally:
        os.close(fd)
        await backend.close()
        await runner.cleanup()
    assert str(caught.value) == (
        f"piece download from {url} failed: the origin closed the connection before the end of the body "
        f"after 1000 of {len(BODY)} bytes"
    )
