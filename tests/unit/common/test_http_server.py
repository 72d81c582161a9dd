"""The side HTTP servers (metrics, health) drop clients that never finish their request (issue 8 item 4)."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiohttp import web

from dragonfly.common import http_server


async def _ok(_request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def test_a_client_that_sends_its_headers_slowly_is_disconnected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_server, "REQUEST_TIMEOUT", 1.0)
    app = web.Application()
    app.router.add_get("/metrics", _ok)
    runner, port = await http_server.start_http_server(app, "127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # and never the blank line that ends the headers
        await writer.drain()
        began = time.monotonic()
        async with asyncio.timeout(30):  # aiohttp's own default would hold it for 75 s
            assert await reader.read() == b""
        assert time.monotonic() - began >= 0.5
        writer.close()

        # A well-behaved client is answered as before.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        async with asyncio.timeout(30):
            response = await reader.read()
        assert response.startswith(b"HTTP/1.1 200")
        assert response.endswith(b"ok")
        writer.close()
    finally:
        await runner.cleanup()
