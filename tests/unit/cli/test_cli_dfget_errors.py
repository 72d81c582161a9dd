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


def test_a_connection_that_ended_mid_download_names_the_daemon_even_while_its_socket_listens(tmp_path: Path) -> None:
    """A daemon killed with SIGKILL may close a caller's connection an instant before its listening socket: the
    dfget that sees the end and checks the socket then finds it still accepting (issue 8's kill-a-parent test)."""
    import socket

    path = str(tmp_path / "d.sock")
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(path)
        listener.listen()
        lost = describe_rpc_error(
            rpc.RpcError(rpc.UNAVAILABLE, "Socket closed", connection_lost=True), path, 30.0, True
        )
        # The same words as a status the daemon sent: its own.
        answered = describe_rpc_error(rpc.RpcError(rpc.UNAVAILABLE, "Socket closed"), path, 30.0, True)
    assert str(lost) == f"lost the connection to dfdaemon at {path} during the download: Socket closed"
    assert str(answered) == "download failed: Socket closed"


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


def test_control_characters_from_the_daemon_are_escaped_on_the_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An origin's reason phrase and headers reach dfget's error output through the daemon; aiohttp accepts ESC and
    BEL in both, so a hostile origin could otherwise write escape sequences (title, clipboard, screen clear) to the
    user's terminal."""
    import json
    from collections.abc import Iterator
    from concurrent import futures
    from typing import Any

    import grpc

    from dragonfly.cli.dfget.command import main

    details = json.dumps({"statusCode": 404, "header": {"X-Evil": "a\x1b[2Jb"}}).encode()

    def stream(request: bytes, context: Any) -> Iterator[bytes]:
        context.set_trailing_metadata((("grpc-status-details-bin", details),))
        context.abort(grpc.StatusCode.NOT_FOUND, "origin returned HTTP 404 Not\x1b]0;pwned\x07Found\r\nfake line")
        yield b""

    path = str(tmp_path / "d.sock")
    handler = grpc.method_handlers_generic_handler(
        "dfdaemon.v2.DfdaemonDownload", {"DownloadTask": grpc.unary_stream_rpc_method_handler(stream)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(2))
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"unix:{path}")
    server.start()
    try:
        status = main(["http://origin/f", "-O", str(tmp_path / "out"), "-e", path, "--timeout", "30s"])
    finally:
        server.stop(None).wait(5)
    stderr = capsys.readouterr().err
    assert status == 1
    assert not any(ord(c) < 0x20 and c != "\n" for c in stderr), repr(stderr)
    lines = stderr.splitlines()
    assert lines[-1] == (
        "dfget: error: download failed: origin returned HTTP 404 Not\\x1b]0;pwned\\x07Found\\x0d\\x0afake line"
    )
    assert "dfget:   X-Evil: a\\x1b[2Jb" in lines


def test_a_url_that_is_not_utf8_ends_dfget_with_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import socket

    from dragonfly.cli.dfget.command import main

    path = str(tmp_path / "d.sock")
    with socket.socket(socket.AF_UNIX) as bound:
        bound.bind(path)  # there, but the request is refused before dfget connects
        status = main(["http://origin/\udcff", "-O", str(tmp_path / "out"), "-e", path, "--timeout", "30s"])
    assert status == 1
    assert capsys.readouterr().err.splitlines()[-1] == (
        "dfget: error: cannot ask dfdaemon for the download: url is not valid UTF-8: 'http://origin/\\udcff'"
    )


def test_a_timeout_past_what_a_socket_holds_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from dragonfly.cli.dfget.command import main

    with pytest.raises(SystemExit) as exited:
        main(["http://origin/f", "-O", str(tmp_path / "out"), "--timeout", "99999999999999999999h"])
    assert exited.value.code == 2
    assert "'99999999999999999999h': the timeout must be at most 365d" in capsys.readouterr().err


def test_peer_ids_in_debug_output_are_escaped_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A parent's peer id is chosen by that (remote) peer; --log-level debug prints it."""
    from collections.abc import Iterator
    from concurrent import futures
    from typing import Any

    import grpc
    from dragonfly_api import common_pb2, dfdaemon_pb2

    from dragonfly.cli.dfget.command import main

    output = tmp_path / "out"
    output.write_bytes(b"x" * 10)  # what the daemon would have written

    def stream(request: bytes, context: Any) -> Iterator[bytes]:
        started = dfdaemon_pb2.DownloadTaskResponse(task_id="t\x1b[2J", peer_id="p\x07")
        started.download_task_started_response.content_length = 10
        yield started.SerializeToString()
        piece = dfdaemon_pb2.DownloadTaskResponse(task_id="t", peer_id="p")
        piece.download_piece_finished_response.piece.CopyFrom(
            common_pb2.Piece(
                number=0, offset=0, length=10, parent_id="evil\x1b]0;x\x07", traffic_type=common_pb2.REMOTE_PEER
            )
        )
        yield piece.SerializeToString()

    path = str(tmp_path / "d.sock")
    handler = grpc.method_handlers_generic_handler(
        "dfdaemon.v2.DfdaemonDownload", {"DownloadTask": grpc.unary_stream_rpc_method_handler(stream)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(2))
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"unix:{path}")
    server.start()
    try:
        status = main(["http://origin/f", "-O", str(output), "-e", path, "--overwrite", "--log-level", "debug"])
    finally:
        server.stop(None).wait(5)
    stderr = capsys.readouterr().err
    assert status == 0, stderr
    assert not any(ord(c) < 0x20 and c != "\n" for c in stderr), repr(stderr)
    assert "dfget: from parent evil\\x1b]0;x\\x07: 10 bytes" in stderr.splitlines()
    assert "dfget: task t\\x1b[2J peer p\\x07" in stderr.splitlines()
