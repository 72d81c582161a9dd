"""dfget as a process: argument checks, exit codes and messages, and how it reads the daemon's stream.

The daemon side here is a stand-in DfdaemonDownload server in this test process (grpc on a unix socket) that
answers with scripted streams, so every client path (success, origin error, incomplete stream, timeout, a daemon
that leaves a file behind) is exercised without depending on the real dfdaemon; the end-to-end tests cover that.
"""

from __future__ import annotations

import contextlib
import json
import os
import pty
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
import pytest
from dragonfly_api import common_pb2, dfdaemon_pb2, dfdaemon_pb2_grpc

import dragonfly
from dragonfly.cli.dfget import main as dfget_main
from dragonfly.common.ids import DEFAULT_FILTERED_QUERY_PARAMS

PIECES = [  # (number, length, traffic type, parent id)
    (0, 4, common_pb2.BACK_TO_SOURCE, ""),
    (1, 3, common_pb2.REMOTE_PEER, "127.0.0.1-peer-2-0d6f"),
    (2, 2, common_pb2.REMOTE_PEER, "127.0.0.1-seed-peer-4c1a-seed"),
    (3, 1, common_pb2.LOCAL_PEER, ""),
]
CONTENT = b"0123456789"
BIG = 1 << 20


def _piece(number: int, length: int, traffic: int, parent: str) -> dfdaemon_pb2.DownloadTaskResponse:
    offset = sum(p[1] for p in PIECES[:number])
    piece = common_pb2.Piece(number=number, offset=offset, length=length, traffic_type=traffic, parent_id=parent)
    return dfdaemon_pb2.DownloadTaskResponse(
        download_piece_finished_response=dfdaemon_pb2.DownloadPieceFinishedResponse(piece=piece)
    )


def _started(length: int, *, finished: bool = False) -> dfdaemon_pb2.DownloadTaskResponse:
    return dfdaemon_pb2.DownloadTaskResponse(
        task_id="t" * 64,
        peer_id="127.0.0.1-peer-1-0000",
        download_task_started_response=dfdaemon_pb2.DownloadTaskStartedResponse(
            content_length=length, is_finished=finished
        ),
    )


class ScriptedDaemon(dfdaemon_pb2_grpc.DfdaemonDownloadServicer):
    """Answers DownloadTask by the URL's path, as the contract in notes/common_api.md describes the daemon."""

    def __init__(self) -> None:
        self.requests: list[common_pb2.Download] = []
        self.metadata: list[dict[str, str]] = []

    def DownloadTask(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        download = request.download
        self.requests.append(download)
        self.metadata.append(dict(context.invocation_metadata()))
        path = urlsplit(download.url).path
        if path == "/ok":
            yield _started(len(CONTENT))
            for piece in PIECES:
                yield _piece(*piece)
            Path(download.output_path).write_bytes(CONTENT)
        elif path == "/local-hit":
            yield _started(len(CONTENT), finished=True)
            Path(download.output_path).write_bytes(CONTENT)
        elif path == "/not-found":
            details = {"message": "GET failed", "header": {}, "status_code": 404}
            context.set_trailing_metadata((("grpc-status-details-bin", json.dumps(details).encode()),))
            context.abort(grpc.StatusCode.NOT_FOUND, "origin request failed: GET http://origin/not-found")
        elif path == "/incomplete":
            yield _started(len(CONTENT))
            yield _piece(*PIECES[0])
        elif path == "/leaves-partial":
            yield _started(len(CONTENT))
            Path(download.output_path).write_bytes(CONTENT[:5])
            context.abort(grpc.StatusCode.INTERNAL, "storage write failed: No space left on device")
        elif path == "/no-file":
            yield _started(len(CONTENT))
            for piece in PIECES:
                yield _piece(*piece)
        elif path == "/slow-finish":
            # The daemon verifies and places the output after the last piece, which takes a while for big files.
            yield _started(BIG)
            piece = common_pb2.Piece(number=0, offset=0, length=BIG, traffic_type=common_pb2.REMOTE_PEER)
            yield dfdaemon_pb2.DownloadTaskResponse(
                download_piece_finished_response=dfdaemon_pb2.DownloadPieceFinishedResponse(piece=piece)
            )
            time.sleep(1.0)
            Path(download.output_path).write_bytes(b"x" * BIG)
        elif path == "/hang":
            # Silent until the client gives up (gRPC ends the call then), at most 10 s.
            ended = threading.Event()
            if context.add_callback(ended.set):
                ended.wait(10)
        else:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unexpected test path {path}")

    def ListTaskEntries(self, request: Any, context: grpc.ServicerContext) -> Any:
        """A directory holding one file, whose path DownloadTask answers with CONTENT."""
        return dfdaemon_pb2.ListTaskEntriesResponse(
            entries=[dfdaemon_pb2.Entry(url=request.url + "ok", content_length=len(CONTENT), is_dir=False)]
        )


@pytest.fixture
def daemon(short_tmp: Path) -> Iterator[tuple[ScriptedDaemon, str]]:
    servicer = ScriptedDaemon()
    server = grpc.server(futures.ThreadPoolExecutor(4))
    dfdaemon_pb2_grpc.add_DfdaemonDownloadServicer_to_server(servicer, server)
    socket_path = str(short_tmp / "d.sock")
    server.add_insecure_port(f"unix:{socket_path}")
    server.start()
    yield servicer, socket_path
    server.stop(grace=None).wait(5)


def dfget(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dragonfly.cli.dfget", *args], capture_output=True, text=True, timeout=60
    )


URL = "http://127.0.0.1:9/ok"


def test_version() -> None:
    result = dfget("--version")
    assert (result.returncode, result.stdout) == (0, f"dfget {dragonfly.__version__}\n")


def test_success_reports_bytes_by_source(daemon: tuple[ScriptedDaemon, str], tmp_path: Path) -> None:
    servicer, sock = daemon
    out = tmp_path / "out.bin"
    result = dfget(URL, "-O", str(out), "-e", sock, "--no-progress")
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == CONTENT
    assert f"dfget: saved {out}: 10 bytes" in result.stderr
    assert "from origin=4 seed=2 peers=3 local=1" in result.stderr
    (request,) = servicer.requests
    assert request.output_path == str(out)
    assert list(request.filtered_query_params) == list(DEFAULT_FILTERED_QUERY_PARAMS)
    assert (request.priority, request.disable_back_to_source, request.overwrite) == (6, False, False)
    assert request.timeout.seconds == 7200


def test_debug_names_bytes_by_parent(daemon: tuple[ScriptedDaemon, str], tmp_path: Path) -> None:
    _, sock = daemon
    result = dfget(URL, "-O", str(tmp_path / "out.bin"), "-e", sock, "--no-progress", "--log-level", "debug")
    assert result.returncode == 0, result.stderr
    parents = re.findall(r"^dfget: from parent (\S+): (\d+) bytes$", result.stderr, re.MULTILINE)
    assert parents == [("127.0.0.1-peer-2-0d6f", "3"), ("127.0.0.1-seed-peer-4c1a-seed", "2")]
    quiet = dfget(URL, "-O", str(tmp_path / "quiet.bin"), "-e", sock, "--no-progress")
    assert quiet.returncode == 0, quiet.stderr
    assert "from parent" not in quiet.stderr


def test_flags_reach_the_daemon(daemon: tuple[ScriptedDaemon, str], tmp_path: Path) -> None:
    servicer, sock = daemon
    out = tmp_path / "out.bin"
    out.write_bytes(b"old")
    digest = "sha256:" + "AB" * 32
    result = dfget(
        URL, "-O", str(out), "-e", sock, "--no-progress", "--overwrite", "--digest", digest, "--tag", "t1",
        "--application", "app", "-H", "Authorization: Bearer x:y", "-H", "X-A:1", "--filtered-query-param", "sig",
        "--piece-length", "8MiB", "--timeout", "90s", "--priority", "LEVEL3", "--disable-back-to-source",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (request,) = servicer.requests
    assert request.digest == "sha256:" + "ab" * 32
    assert (request.tag, request.application) == ("t1", "app")
    assert dict(request.request_header) == {"Authorization": "Bearer x:y", "X-A": "1"}
    assert list(request.filtered_query_params) == ["sig"]
    assert (request.piece_length, request.timeout.seconds, request.priority) == (8 * 1024 * 1024, 90, 3)
    assert request.disable_back_to_source
    assert request.overwrite
    assert request.type == common_pb2.STANDARD


def test_copy_is_asked_for_in_the_call_metadata(daemon: tuple[ScriptedDaemon, str], tmp_path: Path) -> None:
    servicer, sock = daemon
    assert dfget(URL, "-O", str(tmp_path / "linked"), "-e", sock, "--no-progress").returncode == 0
    result = dfget(URL, "-O", str(tmp_path / "copied"), "-e", sock, "--no-progress", "--copy")
    assert result.returncode == 0, result.stderr
    assert [m.get("x-dragonfly-output-copy") for m in servicer.metadata] == [None, "true"]
    refused = dfget(URL, "-O", str(tmp_path / "both"), "-e", sock, "--copy", "--force-hard-link")
    assert refused.returncode == 2
    assert "--copy and --force-hard-link exclude each other" in refused.stderr
    assert len(servicer.requests) == 2


def test_relative_output_is_sent_absolute(daemon: tuple[ScriptedDaemon, str], tmp_path: Path) -> None:
    servicer, sock = daemon
    result = subprocess.run(
        [sys.executable, "-m", "dragonfly.cli.dfget", URL, "-O", "rel.bin", "-e", sock, "--no-progress"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(Path(dragonfly.__file__).parent.parent)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert servicer.requests[0].output_path == str(tmp_path / "rel.bin")


def test_local_hit_without_piece_messages_counts_as_local(daemon: tuple[ScriptedDaemon, str], tmp_path: Path) -> None:
    _, sock = daemon
    result = dfget("http://127.0.0.1:9/local-hit", "-O", str(tmp_path / "o"), "-e", sock, "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "from origin=0 seed=0 peers=0 local=10" in result.stderr


# Modules a local hit does not need (issue 14: dfget's start is most of a local hit). grpc and protobuf bring
# asyncio, logging, inspect and the like with them; the others come only from dfget's own imports.
NOT_ON_THE_DOWNLOAD_PATH = {
    "dataclasses",
    "hashlib",
    "uuid",
    "json",
    "tempfile",
    "dragonfly.common.ids",
    "dragonfly.common.byte_range",
    "dragonfly.common.redact",
    "dragonfly.cli.dfget.recursive",
    # dfget speaks gRPC over HTTP/2 itself (dragonfly.cli.dfget.rpc) and writes and reads its messages itself
    # (dragonfly.cli.dfget.messages): grpcio and the protobuf runtime cost more than a local hit.
    "grpc",
    "google.protobuf",
    "dragonfly_api",
    # Type hints only (a few ms each start), and socket.py's selectors and enums: dfget uses _socket.
    "typing",
    "socket",
    # argparse's default formatter imports it (and bz2, lzma) for the terminal width; dfget's does not.
    "shutil",
}
NOT_BEFORE_THE_SOCKET_IS_FOUND = {"grpc", "google.protobuf", "dragonfly_api", "asyncio", "logging"}


def _imported(*args: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run dfget under ``-X importtime``; return the result and every module it imported."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "dragonfly.cli.dfget", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = result.stderr.splitlines()
    modules = {line.rsplit("|", 1)[1].strip() for line in lines if line.startswith("import time:")}
    modules.discard("imported package")  # the header line
    return result, modules


def test_a_local_hit_imports_only_what_it_uses(daemon: tuple[ScriptedDaemon, str], tmp_path: Path) -> None:
    _, sock = daemon
    result, modules = _imported("http://127.0.0.1:9/local-hit", "-O", str(tmp_path / "o"), "-e", sock, "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "from origin=0 seed=0 peers=0 local=10" in result.stderr
    assert {"dragonfly.cli.dfget.rpc", "dragonfly.cli.dfget.messages", "dragonfly.cli.dfget.client"} <= modules
    assert not modules & NOT_ON_THE_DOWNLOAD_PATH, sorted(modules & NOT_ON_THE_DOWNLOAD_PATH)


def test_no_daemon_is_reported_before_grpc_is_imported(tmp_path: Path) -> None:
    result, modules = _imported(URL, "-O", str(tmp_path / "o"), "-e", str(tmp_path / "missing.sock"))
    assert result.returncode == 1
    assert "dfget: error: dfdaemon is not running" in result.stderr
    assert "dragonfly.cli.dfget.parser" in modules
    assert not modules & NOT_BEFORE_THE_SOCKET_IS_FOUND, sorted(modules & NOT_BEFORE_THE_SOCKET_IS_FOUND)


def test_a_failed_flush_at_exit_gives_the_interpreters_status(tmp_path: Path) -> None:
    # dfget ends its process without the interpreter's teardown, which is where a buffered standard output is
    # flushed: a write that fails there must still fail the command, with the interpreter's status.
    env = {key: value for key, value in os.environ.items() if key != "PYTHONUNBUFFERED"}
    with open("/dev/full", "w") as full:
        result = subprocess.run(
            [sys.executable, "-m", "dragonfly.cli.dfget", "--version"],
            stdout=full,
            stderr=subprocess.PIPE,
            env=env,
            timeout=60,
        )
    assert result.returncode == 120
    assert b"cannot write to standard output: No space left on device" in result.stderr


def test_origin_status_is_shown(daemon: tuple[ScriptedDaemon, str], tmp_path: Path) -> None:
    _, sock = daemon
    out = tmp_path / "o"
    result = dfget("http://127.0.0.1:9/not-found", "-O", str(out), "-e", sock, "--no-progress")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "dfget: error: download failed: origin request failed: GET http://origin/not-found (origin answered HTTP 404)"
    )
    assert not out.exists()


def test_incomplete_stream_fails(daemon: tuple[ScriptedDaemon, str], tmp_path: Path) -> None:
    _, sock = daemon
    out = tmp_path / "o"
    result = dfget("http://127.0.0.1:9/incomplete", "-O", str(out), "-e", sock, "--no-progress")
    assert result.returncode == 1
    assert result.stderr.strip() == "dfget: error: download incomplete: received 4 of 10 bytes"
    assert not out.exists()


def test_file_left_by_a_failed_download_is_removed(daemon: tuple[ScriptedDaemon, str], tmp_path: Path) -> None:
    _, sock = daemon
    out = tmp_path / "o"
    result = dfget("http://127.0.0.1:9/leaves-partial", "-O", str(out), "-e", sock, "--no-progress")
    assert result.returncode == 1
    assert "storage write failed: No space left on device" in result.stderr
    assert not out.exists()


def test_success_without_output_file_fails(daemon: tuple[ScriptedDaemon, str], tmp_path: Path) -> None:
    _, sock = daemon
    out = tmp_path / "o"
    result = dfget("http://127.0.0.1:9/no-file", "-O", str(out), "-e", sock, "--no-progress")
    assert result.returncode == 1
    assert result.stderr.strip() == f"dfget: error: dfdaemon reported success but wrote no file at {out}"


def test_timeout(daemon: tuple[ScriptedDaemon, str], tmp_path: Path) -> None:
    _, sock = daemon
    began = time.monotonic()
    result = dfget("http://127.0.0.1:9/hang", "-O", str(tmp_path / "o"), "-e", sock, "--timeout", "1s")
    assert result.returncode == 1
    assert result.stderr.startswith("dfget: error: timed out after 1s (--timeout)")
    # Not cut short: the 1 s deadline was waited for (dfget's own run is bounded by the helper's 60 s).
    assert time.monotonic() - began >= 1


def test_daemon_not_running_no_socket(tmp_path: Path) -> None:
    sock = tmp_path / "missing.sock"
    result = dfget(URL, "-O", str(tmp_path / "o"), "-e", str(sock))
    assert result.returncode == 1
    assert result.stderr.startswith(f"dfget: error: dfdaemon is not running: no socket at {sock}; start it with")
    assert "dfdaemon --config" in result.stderr
    assert "dragonfly up" in result.stderr
    assert not (tmp_path / "o").exists()


def test_daemon_not_running_stale_socket(short_tmp: Path, tmp_path: Path) -> None:
    sock_path = short_tmp / "stale.sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(sock_path))  # bound, never listening: what a crashed daemon leaves behind
    result = dfget(URL, "-O", str(tmp_path / "o"), "-e", str(sock_path))
    assert result.returncode == 1
    assert result.stderr.startswith(f"dfget: error: cannot connect to dfdaemon at {sock_path}")
    assert "is it running?" in result.stderr


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        # Something that is not a gRPC server on the socket (stands for an outside program, not our daemon).
        (b"HTTP/1.1 400 Bad Request\r\n\r\n", r"download failed: HTTP/2 protocol error from the daemon: frame of"),
        # A server that accepts and closes at once (a reset when the client's frames were left unread).
        (b"", r"download failed: (Socket closed|Connection lost \(Connection reset by peer\))$"),
    ],
)
def test_a_socket_that_does_not_speak_grpc(short_tmp: Path, tmp_path: Path, answer: bytes, error: str) -> None:
    sock_path = short_tmp / "other.sock"
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(sock_path))
        listener.listen(1)

        def serve() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.recv(24)
                conn.sendall(answer)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        result = dfget(URL, "-O", str(tmp_path / "o"), "-e", str(sock_path), "--no-progress")
        thread.join(10)
    assert result.returncode == 1
    assert re.match(f"dfget: error: {error}", result.stderr.strip()), result.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ftp://host/f", "-O", "/tmp/x"], "unsupported URL; the supported schemes are http://, https://, file://"),
        (["file://host/etc/passwd", "-O", "/tmp/x"], "expected file:///absolute/path"),
        (["http:///nohost", "-O", "/tmp/x"], "the URL has no host"),
        ([URL, "-O", "/tmp/x", "--digest", "md5:abc"], "unknown algorithm 'md5'"),
        ([URL, "-O", "/tmp/x", "--digest", "sha256:abc"], "expected 64 lower-case hex digits after 'sha256:'"),
        ([URL, "-O", "/tmp/x", "-H", "NoColon"], "expected 'Key: Value'"),
        ([URL, "-O", "/tmp/x", "--piece-length", "1MiB"], "piece length must be between 4MiB and 64MiB"),
        ([URL, "-O", "/tmp/x", "--timeout", "soon"], "expected a duration"),
        ([URL, "-O", "/tmp/x", "--priority", "9"], "expected 0..6 or LEVEL0..LEVEL6"),
        ([URL], "the URL and -O/--output are required"),
        ([URL, "-O", "/tmp/x", "--range", "9-3"], "the last byte 3 is before the first byte 9"),
        ([URL, "-O", "/tmp/x", "-H", "Range: items=1-2"], "expected bytes=FIRST-LAST"),
        ([URL, "-O", "/tmp/x", "--range", "1-2", "-H", "Range: bytes=1-2"], "give the range once"),
        # Issue 8 item 15: an unknown option was reported as a bad URL (the value after it taken for the URL).
        (["--bogus", "0-99", URL, "-O", "/tmp/x"], "unrecognized option --bogus"),
        (["-Z", URL, "-O", "/tmp/x"], "unrecognized option -Z"),
    ],
)
def test_malformed_command_line_exits_2(args: list[str], message: str) -> None:
    result = dfget(*args)
    assert result.returncode == 2
    assert message in result.stderr


def test_every_command_takes_the_same_log_levels() -> None:
    """Issue 8 item 15: dfget took --log-level warn, dfdaemon refused it."""
    for command in ("dfget", "dfdaemon", "scheduler"):
        module = "dragonfly.cli.scheduler" if command == "scheduler" else f"dragonfly.cli.{command}"
        for level in ("debug", "info", "warn", "warning", "error"):
            result = subprocess.run(
                [sys.executable, "-m", module, "--log-level", level, "--definitely-not-an-option"],
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert "invalid choice" not in result.stderr, (command, level, result.stderr)
            assert "unrecognized option --definitely-not-an-option" in result.stderr, (command, result.stderr)


def test_help_shows_no_markup() -> None:
    """Issue 8 item 15: `dragonfly up --help` showed raw reStructuredText."""
    for argv in (["up", "--help"], ["certs", "--help"]):
        result = subprocess.run(
            [sys.executable, "-m", "dragonfly.cli.dragonfly", *argv], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        assert "``" not in result.stdout, result.stdout


def test_the_progress_bar_and_the_summary_show_the_same_rate(
    daemon: tuple[ScriptedDaemon, str], tmp_path: Path
) -> None:
    """Issue 8 item 17: the bar's clock started after dfget's imports and the summary's before (79.8 vs 26.8 MiB/s)."""
    _servicer, sock = daemon
    primary, replica = pty.openpty()  # the bar is drawn only on a terminal
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "dragonfly.cli.dfget", "http://127.0.0.1:9/slow-finish", "-O", str(tmp_path / "o"),
             "-e", sock],
            stdout=subprocess.PIPE, stderr=replica, text=True, timeout=60,
        )  # fmt: skip
        os.close(replica)
        output = b""
        with contextlib.suppress(OSError):
            while chunk := os.read(primary, 65536):
                output += chunk
    finally:
        os.close(primary)
    assert proc.returncode == 0, output
    text = output.decode()
    bar_rates = re.findall(r"\(([\d.]+) (B|KiB|MiB)/s, eta", text)
    summary = re.search(r"in [\d.]+s \(([\d.]+) (B|KiB|MiB)/s\)", text)
    assert bar_rates, text
    assert summary, text
    units = {"B": 1, "KiB": 1024, "MiB": 1024 * 1024}
    last_bar = float(bar_rates[-1][0]) * units[bar_rates[-1][1]]
    summary_rate = float(summary.group(1)) * units[summary.group(2)]
    assert abs(last_bar - summary_rate) <= 0.05 * summary_rate, (last_bar, summary_rate, text)


def test_digest_help_lists_every_algorithm_the_parser_accepts() -> None:
    """Issue 8 item 17: --help named sha256/sha512/crc32 while crc32c and blake3 are accepted too."""
    from dragonfly.common.digest import ALGORITHMS

    result = dfget("--help")
    help_text = " ".join(result.stdout.split())
    for algorithm in ALGORITHMS:
        assert f"{algorithm}:" in help_text, algorithm


def test_output_directory_missing(daemon: tuple[ScriptedDaemon, str], tmp_path: Path) -> None:
    servicer, sock = daemon
    result = dfget(URL, "-O", str(tmp_path / "nope" / "o"), "-e", sock)
    assert result.returncode == 1
    assert result.stderr.strip() == f"dfget: error: output directory {tmp_path / 'nope'} does not exist"
    assert servicer.requests == []


def test_existing_file_without_overwrite(daemon: tuple[ScriptedDaemon, str], tmp_path: Path) -> None:
    servicer, sock = daemon
    out = tmp_path / "o"
    out.write_bytes(b"keep me")
    result = dfget(URL, "-O", str(out), "-e", sock)
    assert result.returncode == 1
    assert result.stderr.strip() == f"dfget: error: output file {out} already exists; pass --overwrite to replace it"
    assert out.read_bytes() == b"keep me"
    assert servicer.requests == []


def test_output_is_a_directory(tmp_path: Path) -> None:
    result = dfget(URL, "-O", str(tmp_path), "-e", "/nonexistent.sock")
    assert result.returncode == 1
    assert result.stderr.strip() == f"dfget: error: output path {tmp_path} is a directory; give a file name"


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory dfget cannot write to: chmod for ordinary users, a read-only tmpfs for root."""
    path = tmp_path / "ro"
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o555)
        yield path
        path.chmod(0o755)
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"running as root and cannot mount a read-only tmpfs: {mounted.stderr.decode().strip()}")
    yield path
    subprocess.run(["umount", str(path)], check=True)


def test_unwritable_output_directory(daemon: tuple[ScriptedDaemon, str], read_only_dir: Path) -> None:
    servicer, sock = daemon
    result = dfget(URL, "-O", str(read_only_dir / "o"), "-e", sock)
    assert result.returncode == 1
    assert result.stderr.strip() == f"dfget: error: output directory {read_only_dir} is not writable"
    assert servicer.requests == []


def test_main_in_process_returns_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert dfget_main([URL, "-O", str(tmp_path / "o"), "-e", str(tmp_path / "none.sock")]) == 1
    assert "dfdaemon is not running" in capsys.readouterr().err
