import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.swarm.origin import OriginServer, TokenBucket, nginx_config
from tests.waiting import wait_for


@pytest.fixture
def origin(tmp_path: Path) -> Iterator[tuple[str, bytes]]:
    data = bytes(range(256)) * 4096  # 1 MiB
    (tmp_path / "blob").write_bytes(data)
    server = OriginServer(("127.0.0.1", 0), tmp_path, 0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", data
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_full_and_ranged_gets_are_counted(origin: tuple[str, bytes]) -> None:
    base, data = origin
    status, _, body = _get(f"{base}/blob")
    assert (status, body) == (200, data)
    status, headers, body = _get(f"{base}/blob", {"Range": "bytes=100-199"})
    assert (status, body) == (206, data[100:200])
    assert headers["Content-Range"] == f"bytes 100-199/{len(data)}"
    status, _, body = _get(f"{base}/blob", {"Range": "bytes=-10"})
    assert (status, body) == (206, data[-10:])
    # The server counts a chunk after sendfile returns, which can be after the client has read it: wait (bounded).
    expected = {"bytes_sent": len(data) + 100 + 10, "requests": 3}
    wait_for(lambda: json.loads(_get(f"{base}/_stats")[2]) == expected, 5, f"the origin's counts to reach {expected}")


def test_bad_requests(origin: tuple[str, bytes]) -> None:
    base, data = origin
    assert _get(f"{base}/missing")[0] == 404
    assert _get(f"{base}/../etc/passwd")[0] == 404
    assert _get(f"{base}/blob", {"Range": f"bytes={len(data)}-"})[0] == 416
    assert _get(f"{base}/blob", {"Range": "lines=1-2"})[0] == 416


def test_token_bucket_holds_the_rate() -> None:
    bucket = TokenBucket(4 * 1024 * 1024)  # burst 0.1 s = 0.4 MiB
    started = time.monotonic()
    for _ in range(8):
        bucket.acquire(256 * 1024)  # 2 MiB: ~0.4 s after the burst
    elapsed = time.monotonic() - started
    assert elapsed >= 0.35  # a loaded machine can only make it later


def test_nginx_config_serves_root_with_sendfile(tmp_path: Path) -> None:
    conf = nginx_config(tmp_path / "data", "10.77.0.2:80", tmp_path)
    assert "listen 10.77.0.2:80;" in conf
    assert f"root {tmp_path / 'data'};" in conf
    assert "sendfile on;" in conf
    assert "daemon off;" in conf
