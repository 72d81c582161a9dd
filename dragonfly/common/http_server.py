"""The small HTTP servers every component runs (metrics, health), with the limits a hostile client needs.

aiohttp keeps a connection that has not finished sending its request open for its keep-alive timeout (75 s by
default in ``web.AppRunner``), so a few hundred clients that send headers a byte at a time hold a few hundred
descriptors; these servers answer scrapers and probes, which send a short request at once. Imports aiohttp only
when called (``import dragonfly`` stays cheap; docs/robustness.md#http-servers).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aiohttp import web

#: Seconds a client has to send a complete request (and the longest a kept-alive connection stays idle).
REQUEST_TIMEOUT = 10.0
#: Longest request line and header field accepted (aiohttp's default is 8190 as well; stated so it stays).
MAX_LINE = 8190


async def start_http_server(app: web.Application, ip: str, port: int) -> tuple[web.AppRunner, int]:
    """Serve ``app`` on ``ip:port`` (0 picks a port); return the runner (``cleanup()`` stops it) and the port."""
    from aiohttp import web

    runner = web.AppRunner(
        app,
        access_log=None,
        keepalive_timeout=REQUEST_TIMEOUT,
        max_line_size=MAX_LINE,
        max_field_size=MAX_LINE,
    )
    await runner.setup()
    site = web.TCPSite(runner, ip, port)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    bound: int = runner.addresses[0][1]
    return runner, bound
