"""Origin failures carry Dragonfly's ``errordetails.v2.Backend``: in the local API's gRPC status (JSON in
``Status.details``, read back by dfget) and in the scheduler's ``DownloadPieceBackToSourceFailedRequest``.

A real TaskManager behind the real DfdaemonDownload service on a unix socket, against a real aiohttp origin.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from aiohttp import web
from dragonfly_api import common_pb2, dfdaemon_pb2, dfdaemon_pb2_grpc, errordetails_pb2
from standalone import standalone_task_manager

from dragonfly.cli.dfget import rpc
from dragonfly.cli.dfget.client import DOWNLOAD_TASK
from dragonfly.cli.dfget.errors import describe_rpc_error
from dragonfly.cli.dfget.rpc import RpcError
from dragonfly.daemon.api.download_server import DfdaemonDownloadService
from dragonfly.daemon.backends.http import HTTPBackend
from dragonfly.daemon.download.source_downloader import back_to_source_failure
from dragonfly.daemon.errors import BackendError

BODY = b"origin bytes\n"
NOISY_HEADERS = {f"X-Noise-{i:02d}": "n" * 40 for i in range(20)}


async def handle(request: web.Request) -> web.StreamResponse:
    if request.path == "/missing":
        return web.Response(status=404, text="no such object", headers={"X-Origin-Trace": "trace-1"})
    if request.path == "/broken":
        return web.Response(status=500, text="origin trouble")
    if request.path == "/noisy":
        return web.Response(status=403, text="denied", headers=NOISY_HEADERS)
    return web.Response(body=BODY)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Daemon:
    base: str
    socket_path: str
    backend: HTTPBackend

    async def download(self, url: str, **fields: object) -> grpc.aio.AioRpcError:
        """Run DownloadTask and return the error it must end with."""
        download = common_pb2.Download(url=url, **fields)  # type: ignore[arg-type]
        async with grpc.aio.insecure_channel(f"unix:{self.socket_path}") as channel:
            call = dfdaemon_pb2_grpc.DfdaemonDownloadStub(channel).DownloadTask(
                dfdaemon_pb2.DownloadTaskRequest(download=download), timeout=30
            )
            with pytest.raises(grpc.aio.AioRpcError) as info:
                async for _ in call:
                    pass
        return info.value


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    run_dir = tempfile.mkdtemp(prefix="df-")  # unix socket paths hold 108 bytes
    socket_path = f"{run_dir}/d.sock"
    try:
        async with standalone_task_manager(tmp_path) as daemon:
            server = grpc.aio.server()
            dfdaemon_pb2_grpc.add_DfdaemonDownloadServicer_to_server(
                DfdaemonDownloadService(storage=daemon.storage, tasks=daemon.manager, scheduler=None, callers=None),
                server,
            )
            server.add_insecure_port(f"unix:{socket_path}")
            await server.start()
            try:
                yield Daemon(f"http://127.0.0.1:{runner.addresses[0][1]}", socket_path, daemon.backend)
            finally:
                await server.stop(None)
    finally:
        await runner.cleanup()
        shutil.rmtree(run_dir, ignore_errors=True)


def details_of(error: grpc.aio.AioRpcError) -> dict[str, object]:
    trailers = [value for key, value in error.trailing_metadata() or () if key == "grpc-status-details-bin"]
    assert len(trailers) == 1, error.trailing_metadata()
    decoded: dict[str, object] = json.loads(trailers[0])
    return decoded


async def test_an_origin_status_reaches_the_requester_as_backend_details(daemon: Daemon, tmp_path: Path) -> None:
    url = f"{daemon.base}/missing"
    error = await daemon.download(url, output_path=str(tmp_path / "out"))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == f"origin returned HTTP 404 Not Found for {url}"
    details = details_of(error)
    assert sorted(details) == ["header", "message", "status_code"]
    assert details["message"] == error.details()
    assert details["status_code"] == 404
    assert isinstance(details["header"], dict)
    assert details["header"]["X-Origin-Trace"] == "trace-1"
    assert details["header"]["Content-Type"] == "text/plain; charset=utf-8"
    assert not (tmp_path / "out").exists()


async def test_a_server_error_after_retries_carries_its_status(daemon: Daemon) -> None:
    error = await daemon.download(f"{daemon.base}/broken")
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert details_of(error)["status_code"] == 500


async def test_a_connection_error_carries_backend_details_without_a_status(daemon: Daemon) -> None:
    url = f"http://127.0.0.1:{closed_port()}/f"
    error = await daemon.download(url)
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    port = url.split(":")[2].split("/")[0]
    # The cause in words, without aiohttp's ("Cannot connect to host ... ssl:default [...]", issue 8 item 16).
    assert error.details() == f"stat of {url} failed: cannot connect to 127.0.0.1:{port} (connection refused)"
    assert details_of(error) == {"message": error.details(), "header": {}, "status_code": None}


async def test_other_failures_carry_no_backend_details(daemon: Daemon, tmp_path: Path) -> None:
    error = await daemon.download(f"{daemon.base}/ok", output_path=str(tmp_path / "out"), digest="sha256:" + "0" * 64)
    assert error.code() == grpc.StatusCode.DATA_LOSS
    assert [key for key, _ in error.trailing_metadata() or () if key == "grpc-status-details-bin"] == []


async def dfget_error(daemon: Daemon, url: str) -> RpcError:
    """Run DownloadTask with dfget's own client (in a thread: it blocks) and return the error it ends with."""
    request = dfdaemon_pb2.DownloadTaskRequest(download=common_pb2.Download(url=url)).SerializeToString()

    def run() -> RpcError:
        with pytest.raises(RpcError) as info:
            list(rpc.call(daemon.socket_path, DOWNLOAD_TASK, request, timeout=30))
        return info.value

    return await asyncio.to_thread(run)


async def test_dfget_shows_the_origin_status_and_short_headers(daemon: Daemon) -> None:
    url = f"{daemon.base}/missing"
    failure = describe_rpc_error(await dfget_error(daemon, url), daemon.socket_path, 30.0, False)
    assert str(failure) == f"download failed: origin returned HTTP 404 Not Found for {url}"
    notes = failure.__notes__
    assert notes[0] == "origin response headers:"
    assert "  X-Origin-Trace: trace-1" in notes[1:]
    assert "  Content-Type: text/plain; charset=utf-8" in notes[1:]


async def test_dfget_shows_many_headers_only_at_debug_level(daemon: Daemon) -> None:
    url = f"{daemon.base}/noisy"
    error = await daemon.download(url)
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    header_count = len(details_of(error)["header"])  # type: ignore[arg-type]
    assert header_count > len(NOISY_HEADERS)
    dfget_failure = await dfget_error(daemon, url)
    quiet = describe_rpc_error(dfget_failure, daemon.socket_path, 30.0, False)
    assert str(quiet) == f"download failed: origin returned HTTP 403 Forbidden for {url}"
    assert quiet.__notes__ == [f"origin sent {header_count} response headers; --log-level debug shows them"]
    verbose = describe_rpc_error(dfget_failure, daemon.socket_path, 30.0, False, verbose=True).__notes__
    assert verbose[0] == "origin response headers:"
    assert len(verbose) == 1 + header_count
    assert [line for line in verbose if line.startswith("  X-Noise-")] == [
        f"  {name}: {value}" for name, value in NOISY_HEADERS.items()
    ]


async def test_the_scheduler_is_told_the_origin_failure(daemon: Daemon) -> None:
    with pytest.raises(BackendError) as info:
        await daemon.backend.stat(f"{daemon.base}/missing", {})
    request = back_to_source_failure(3, info.value)
    assert request.piece_number == 3
    assert request.WhichOneof("response") == "backend"
    assert request.backend.status_code == 404
    assert request.backend.message == info.value.message
    assert request.backend.header["X-Origin-Trace"] == "trace-1"

    with pytest.raises(BackendError) as refused:
        await daemon.backend.stat(f"http://127.0.0.1:{closed_port()}/f", {})
    request = back_to_source_failure(0, refused.value)
    assert request.WhichOneof("response") == "backend"
    assert not request.backend.HasField("status_code")
    assert request.backend.message == refused.value.message

    request = back_to_source_failure(1, RuntimeError("disk on fire"))
    assert request.WhichOneof("response") == "unknown"
    assert request.unknown == errordetails_pb2.Unknown(message="disk on fire")
