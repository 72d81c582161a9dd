"""A real HTTP origin for the demo and the tests: files from a directory, Range support, byte counts, faults.

    python -m dragonfly.cli.demo_origin --dir DIR [--host 127.0.0.1] [--port 0] [--cert PEM --key PEM]

With ``--cert`` and ``--key`` it serves https (the tests' origin with a certificate of a CA they make).

Control endpoints (JSON), used by ``dragonfly up --demo`` and the tests through ``cluster.OriginProcess``:

- ``GET /_stats``: ``{"bytes_total": N, "paths": {"/f": N}, "requests": {"/f": N}}``, body bytes actually written
  to sockets; ``DELETE /_stats`` resets them.
- ``POST /_faults`` with ``{"path": "/f", "mode": M, ...}`` arms a fault for one path; ``DELETE /_faults`` clears all.
  Modes: ``404`` and ``500`` (status only), ``reset`` (headers and ``after`` body bytes, then a TCP RST),
  ``short`` (the full Content-Length announced, ``after`` bytes sent, then a clean close), ``slow`` (the body paced
  at ``rate`` bytes/s), ``redirect`` (``302`` to ``location``), ``corrupt`` (every body byte inverted: an origin
  that answers this request differently than others). ``after`` defaults to half the response body;
  ``count`` limits the fault to that many requests (default: every request).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import ssl
import struct
import sys
import time
from collections import Counter
from dataclasses import dataclass

from aiohttp import web

CHUNK = 1024 * 1024
SLOW_CHUNK = 64 * 1024
FAULT_MODES = ("404", "500", "reset", "short", "slow", "redirect", "corrupt")
_INVERT = bytes(255 - b for b in range(256))


@dataclass(slots=True)
class Fault:
    """One armed fault for one path."""

    mode: str
    rate: float = 0.0
    after: int | None = None
    count: int | None = None
    location: str = ""


class Origin:
    """The request handlers and the counters they share."""

    def __init__(self, directory: str) -> None:
        self.root = os.path.realpath(directory)
        self.bytes_by_path: Counter[str] = Counter()
        self.requests_by_path: Counter[str] = Counter()
        self.faults: dict[str, Fault] = {}

    def app(self) -> web.Application:
        """Build the aiohttp application."""
        app = web.Application()
        app.router.add_get("/_stats", self.get_stats)
        app.router.add_delete("/_stats", self.reset_stats)
        app.router.add_post("/_faults", self.arm_fault)
        app.router.add_delete("/_faults", self.clear_faults)
        app.router.add_route("GET", "/{path:.*}", self.serve)
        app.router.add_route("HEAD", "/{path:.*}", self.serve)
        return app

    async def get_stats(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "bytes_total": sum(self.bytes_by_path.values()),
                "paths": dict(self.bytes_by_path),
                "requests": dict(self.requests_by_path),
            }
        )

    async def reset_stats(self, request: web.Request) -> web.Response:
        self.bytes_by_path.clear()
        self.requests_by_path.clear()
        return web.json_response({})

    async def arm_fault(self, request: web.Request) -> web.Response:
        body = await request.json()
        path, mode = body.get("path"), str(body.get("mode"))
        if not isinstance(path, str) or not path.startswith("/") or mode not in FAULT_MODES:
            raise web.HTTPBadRequest(text=f"need a path starting with / and a mode among {', '.join(FAULT_MODES)}")
        if mode == "slow" and not float(body.get("rate", 0)) > 0:
            raise web.HTTPBadRequest(text="mode slow needs rate > 0 (bytes per second)")
        if mode == "redirect" and not body.get("location"):
            raise web.HTTPBadRequest(text="mode redirect needs a location")
        self.faults[path] = Fault(
            mode, float(body.get("rate", 0)), body.get("after"), body.get("count"), str(body.get("location", ""))
        )
        return web.json_response({})

    async def clear_faults(self, request: web.Request) -> web.Response:
        self.faults.clear()
        return web.json_response({})

    def _take_fault(self, path: str) -> Fault | None:
        fault = self.faults.get(path)
        if fault is None:
            return None
        if fault.count is not None:
            fault.count -= 1
            if fault.count <= 0:
                del self.faults[path]
        return fault

    def _resolve(self, path: str) -> tuple[str, os.stat_result]:
        # realpath + prefix check keeps "../" and symlinks from escaping the served directory.
        full = os.path.realpath(os.path.join(self.root, path))
        if os.path.commonpath([full, self.root]) != self.root or not os.path.isfile(full):
            raise web.HTTPNotFound(text=f"no such file: /{path}\n")
        return full, os.stat(full)

    async def serve(self, request: web.Request) -> web.StreamResponse:
        key = "/" + request.match_info["path"]
        self.requests_by_path[key] += 1
        fault = self._take_fault(key)
        if fault is not None and fault.mode == "redirect":
            raise web.HTTPFound(fault.location)
        if fault is not None and fault.mode in ("404", "500"):
            raise (
                web.HTTPNotFound(text="not found (fault)\n")
                if fault.mode == "404"
                else web.HTTPInternalServerError(text="internal error (fault)\n")
            )
        full, stat = self._resolve(request.match_info["path"])
        size = stat.st_size
        try:
            rng = request.http_range
        except ValueError:
            raise web.HTTPRequestRangeNotSatisfiable(headers={"Content-Range": f"bytes */{size}"}) from None
        start, stop = rng.start, rng.stop
        ranged = start is not None or stop is not None
        if start is not None and start < 0:  # suffix range "bytes=-N"
            start, stop = max(size + start, 0), size
        start = start or 0
        stop = size if stop is None else min(stop, size)
        if ranged and (start >= size or start >= stop):
            raise web.HTTPRequestRangeNotSatisfiable(headers={"Content-Range": f"bytes */{size}"})

        response = web.StreamResponse(status=206 if ranged else 200)
        response.content_type = "application/octet-stream"
        response.content_length = stop - start
        response.headers["Accept-Ranges"] = "bytes"
        response.headers["Last-Modified"] = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(stat.st_mtime))
        if ranged:
            response.headers["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
        await response.prepare(request)
        if request.method == "HEAD":
            return response

        limit = stop
        if fault is not None and fault.mode in ("reset", "short"):
            after = fault.after if fault.after is not None else (stop - start) // 2
            limit = start + min(after, stop - start)
        corrupt = fault is not None and fault.mode == "corrupt"
        await self._send(response, full, start, limit, key, fault.rate if fault else 0.0, corrupt=corrupt)
        if limit < stop:
            assert fault is not None
            self._cut(request, rst=fault.mode == "reset")
            return response
        await response.write_eof()
        return response

    async def _send(
        self, response: web.StreamResponse, full: str, start: int, stop: int, key: str, rate: float, *, corrupt: bool
    ) -> None:
        chunk = SLOW_CHUNK if rate else CHUNK
        began = time.monotonic()
        sent = 0
        fd = os.open(full, os.O_RDONLY)
        try:
            offset = start
            while offset < stop:
                data = os.pread(fd, min(chunk, stop - offset), offset)
                if not data:
                    break
                if corrupt:
                    data = data.translate(_INVERT)
                await response.write(data)
                offset += len(data)
                sent += len(data)
                self.bytes_by_path[key] += len(data)
                if rate:
                    ahead = sent / rate - (time.monotonic() - began)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
        finally:
            os.close(fd)

    @staticmethod
    def _cut(request: web.Request, *, rst: bool) -> None:
        transport = request.transport
        if transport is None:
            return
        sock = transport.get_extra_info("socket")
        if rst and sock is not None:
            # Linger 0 turns close() into an RST instead of a FIN: the client sees "connection reset by peer".
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.close()


async def serve_forever(directory: str, host: str, port: int, context: ssl.SSLContext | None = None) -> int:
    """Serve ``directory`` until cancelled (https with ``context``)."""
    from dragonfly.common.process import announce_listening, announce_ready

    runner = web.AppRunner(Origin(directory).app(), access_log=None, handle_signals=False)
    await runner.setup()
    # Bind ourselves so port 0 resolves to a real port we can announce.
    sock = socket.create_server((host, port), reuse_port=False)
    await web.SockSite(runner, sock, ssl_context=context).start()
    bound_host, bound_port = sock.getsockname()[:2]
    announce_listening("origin", f"{bound_host}:{bound_port}")
    announce_ready("origin")
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the demo origin server."""
    parser = argparse.ArgumentParser(prog="demo_origin", description="HTTP origin for the demo and the tests.")
    parser.add_argument("--dir", required=True, help="directory whose files are served")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port to bind (default 0: a free port)")
    parser.add_argument("--cert", help="PEM certificate chain: serve https")
    parser.add_argument("--key", help="PEM private key of --cert")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.dir):
        print(f"demo_origin: error: not a directory: {args.dir}", file=sys.stderr)
        return 2
    if (args.cert is None) != (args.key is None):
        parser.error("--cert and --key go together")
    context = None
    if args.cert is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.cert, args.key)
    from dragonfly.common.process import run_async

    return run_async(lambda: serve_forever(args.dir, args.host, args.port, context))


if __name__ == "__main__":
    sys.exit(main())
