"""Origins for the benchmark: nginx (sendfile, unshaped by itself) or a small rate-limited HTTP/1.1 file server.

The Python origin exists for ``--loopback``, where there is no shaped link and the origin's *aggregate* upload
must still be capped (nginx's ``limit_rate`` is per connection). It serves GET/HEAD with one byte range, sends with
``os.sendfile`` and counts the body bytes it sent (``GET /_stats``).

    python -m bench.swarm.origin --dir DIR --host 127.0.0.1 --port 0 --rate 50000000
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_CHUNK = 256 * 1024


class TokenBucket:
    """Bytes per second shared by all connections; a burst of 0.1 s keeps the rate smooth."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._burst = max(rate * 0.1, _CHUNK)
        self._tokens = self._burst
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def acquire(self, n: int) -> None:
        if self.rate <= 0:
            return
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self._burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= n
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait:
            time.sleep(wait)


class OriginServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], root: Path, rate: float) -> None:
        super().__init__(address, OriginHandler)
        self.root = root.resolve()
        self.bucket = TokenBucket(rate)
        self.bytes_sent = 0
        self.requests = 0
        self.lock = threading.Lock()


class OriginHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: OriginServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        if self.path == "/_stats":
            with self.server.lock:
                payload = json.dumps({"bytes_sent": self.server.bytes_sent, "requests": self.server.requests})
            data = payload.encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        self._serve(body=True)

    def _serve(self, *, body: bool) -> None:
        path = (self.server.root / self.path.split("?", 1)[0].lstrip("/")).resolve()
        if self.server.root not in path.parents or not path.is_file():
            self.send_error(404)
            return
        size = path.stat().st_size
        start, end = 0, size - 1
        status = 200
        header = self.headers.get("Range")
        if header:
            match = _RANGE.match(header.strip())
            if not match or not (match.group(1) or match.group(2)):
                self.send_error(416)
                return
            if match.group(1):
                start = int(match.group(1))
                end = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
            else:
                start = max(0, size - int(match.group(2)))
            if start > end or start >= size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        length = end - start + 1
        self.send_response(status)
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        with self.server.lock:
            self.server.requests += 1
        if not body:
            return
        self.wfile.flush()
        with path.open("rb") as f:
            offset, remaining = start, length
            while remaining:
                n = min(_CHUNK, remaining)
                self.server.bucket.acquire(n)
                sent = os.sendfile(self.connection.fileno(), f.fileno(), offset, n)
                if sent == 0:
                    break
                offset += sent
                remaining -= sent
                with self.server.lock:
                    self.server.bytes_sent += sent


def nginx_config(root: Path, listen: str, prefix: Path) -> str:
    """Return an nginx.conf serving `root` on `listen` ("ip:port") with sendfile and no logging."""
    return f"""\
user root;
worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    client_body_temp_path {prefix}/tmp;
    proxy_temp_path {prefix}/tmp;
    fastcgi_temp_path {prefix}/tmp;
    uwsgi_temp_path {prefix}/tmp;
    scgi_temp_path {prefix}/tmp;
    default_type application/octet-stream;
    server {{
        listen {listen};
        root {root};
    }}
}}
"""


def main(argv: list[str] | None = None) -> int:
    """Serve --dir until SIGTERM; print "origin listening on HOST:PORT" once bound."""
    parser = argparse.ArgumentParser(prog="python -m bench.swarm.origin")
    parser.add_argument("--dir", required=True, type=Path)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--rate", type=float, default=0.0, help="aggregate upload limit in bytes/s (0: none)")
    args = parser.parse_args(argv)
    server = OriginServer((args.host, args.port), args.dir, args.rate)
    print(f"origin listening on {args.host}:{server.server_address[1]}", flush=True)
    import signal

    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    server.serve_forever(poll_interval=0.2)
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
