"""How dfget words a DownloadTask call that failed because the daemon went away."""

from __future__ import annotations

from pathlib import Path

import pytest

from dragonfly.cli.dfget import rpc
from dragonfly.cli.dfget.errors import describe_rpc_error


@pytest.mark.parametrize(
    ("code", "details"),
    [
        (rpc.UNAVAILABLE, "Socket closed"),
        (rpc.UNKNOWN, "Stream removed (recvmsg:Connection reset by peer (104))"),
    ],
)
def test_a_daemon_that_died_mid_download_is_named(tmp_path: Path, code: int, details: str) -> None:
    gone = str(tmp_path / "gone.sock")  # nothing listens there
    failure = describe_rpc_error(rpc.RpcError(code, details), gone, 30.0, True)
    assert str(failure) == f"lost the connection to dfdaemon at {gone} during the download: {details}"


def test_an_unknown_status_from_a_running_daemon_is_its_own(tmp_path: Path) -> None:
    import socket

    path = str(tmp_path / "d.sock")
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(path)
        listener.listen()
        failure = describe_rpc_error(rpc.RpcError(rpc.UNKNOWN, "boom"), path, 30.0, True)
        no_details = describe_rpc_error(rpc.RpcError(rpc.INTERNAL, ""), path, 30.0, True)
    assert str(failure) == "download failed: boom"
    assert str(no_details) == "download failed: INTERNAL"


@pytest.mark.parametrize(
    "details_bin",
    [
        # Nested deeper than the JSON decoder's recursion limit: RecursionError, not a ValueError.
        b"[" * 100_000,
        b"\xff\xfe not UTF-8",
        b'{"statusCode": "not a number"}',
        b"[1, 2]",
    ],
)
def test_backend_details_the_daemon_garbled_are_left_out(tmp_path: Path, details_bin: bytes) -> None:
    # NOT_FOUND (5): neither lost nor timed out, so the details are read.
    error = rpc.RpcError(5, "origin refused", {"grpc-status-details-bin": details_bin})
    failure = describe_rpc_error(error, str(tmp_path / "d.sock"), 30.0, True)
    assert str(failure) == "download failed: origin refused"
    assert not getattr(failure, "__notes__", [])
