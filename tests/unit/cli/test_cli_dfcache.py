"""dfcache's command line: what it refuses before it talks to a daemon, a daemon that is not there, and what it
sends and shows against a stand-in daemon (grpcio's server: the reference for dfcache's own gRPC client)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from dragonfly_api import common_pb2, dfdaemon_pb2
from google.protobuf import duration_pb2, empty_pb2, timestamp_pb2

from dragonfly.cli import dfcache


@pytest.fixture(autouse=True)
def dragonflys_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    """The checks under test are the default ones, whatever the environment running the tests says."""
    monkeypatch.delenv("DRAGONFLY_REQUEST_VALIDATION", raising=False)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    try:
        code = dfcache.main(list(argv))
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["export", "not-an-id", "-O", "/tmp/x"], "a task id is 64 lower-case hex digits"),
        (["stat", "a" * 63 + "A"], "a task id is 64 lower-case hex digits"),
        (["delete", "a" * 64 + "\n"], "a task id is 64 lower-case hex digits"),
        (["import", "/etc/hostname", "--ttl", "8d"], "'8d': the TTL must be at most 7d"),
        (["import", "/etc/hostname", "--ttl", "0s"], "the TTL must be positive"),
        # Past what a socket timeout or a protobuf Duration holds: an OverflowError traceback in the client before.
        (["stat", "a" * 64, "--timeout", "99999999999999999999h"], "the timeout must be at most 365d"),
        # The daemon takes 1m, the scheduler 5m: dfcache refuses before the daemon copies the file.
        (["import", "/etc/hostname", "--ttl", "1s"], "'1s': the TTL must be at least 5m (the scheduler keeps"),
        (["import", "/etc/hostname", "--ttl", "4m59s"], "the TTL must be at least 5m"),
        (["import", "/etc/hostname", "--persistent-replica-count", "6"], "between 1 and 5"),
        (["import", "/etc/hostname", "--piece-length", "1MiB"], "between 4MiB and 64MiB"),
        (["stat", "a" * 64, "--bogus"], "unrecognized option --bogus"),
        (["export", "a" * 64], "-O/--output"),
    ],
)
def test_bad_command_lines_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    code, err = run(capsys, *argv)
    assert code == 2
    assert message in err


@pytest.mark.parametrize("ttl", ["5m", "7d", "1h"])
def test_ttls_dragonfly_accepts_pass_the_command_line(ttl: str) -> None:
    args = dfcache.build_parser().parse_args(["import", "/etc/hostname", "--ttl", ttl])
    assert 300 <= args.ttl <= 7 * 86400


def test_seconds_are_accepted_only_when_the_servers_skip_dragonflys_rules(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DRAGONFLY_REQUEST_VALIDATION", "0")
    assert dfcache.build_parser().parse_args(["import", "/etc/hostname", "--ttl", "4s"]).ttl == 4.0
    code, err = run(capsys, "import", "/etc/hostname", "--ttl", "8d")
    assert code == 2
    assert "the TTL must be between 1s and 7d" in err


def test_a_command_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run(capsys)
    assert code == 2
    assert "a command is required" in err


def test_no_daemon(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, err = run(capsys, "stat", "a" * 64, "-e", str(tmp_path / "none.sock"), "--timeout", "2s")
    assert code == 1
    assert f"no dfdaemon is listening on {tmp_path / 'none.sock'}" in err


def test_import_of_a_missing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, err = run(capsys, "import", str(tmp_path / "missing"), "-e", str(tmp_path / "none.sock"))
    assert code == 1
    assert "is not a file" in err


# --- against a stand-in daemon (grpcio's server on a unix socket): what dfcache sends, shows and refuses --------

TASK_ID = "b" * 64


class StandIn:
    """DfdaemonDownload's persistent cache methods, scripted; records each request and its metadata."""

    def __init__(self, directory: Path) -> None:
        self.path = str(directory / "d.sock")
        self.requests: list[tuple[str, Any, dict[str, str]]] = []
        self.pieces: list[bytes] = [b"0123", b"4567", b"89"]
        # A piece's offset when it is not where the pieces before it end.
        self.offsets: dict[int, int] = {}
        # How many answers StatPersistentCacheTask gives (a unary call: one).
        self.stat_answers = 1
        self.content_length = 10
        self.task = common_pb2.PersistentCacheTask(
            id=TASK_ID,
            persistent_replica_count=2,
            current_persistent_replica_count=1,
            current_replica_count=3,
            tag="t\x1b[2J",
            piece_length=4 << 20,
            content_length=10,
            piece_count=1,
            state="Succeeded",
            ttl=duration_pb2.Duration(seconds=3600, nanos=500_000_000),
            created_at=timestamp_pb2.Timestamp(seconds=1_764_633_600),
        )

        def unary(name: str, request_type: Any, answer: Any) -> grpc.RpcMethodHandler:
            def handle(request: Any, context: grpc.ServicerContext) -> Any:
                self.requests.append((name, request, dict(context.invocation_metadata())))
                if getattr(request, "task_id", "") == "c" * 64:
                    context.abort(grpc.StatusCode.NOT_FOUND, "task cccc not found")
                return answer()

            return grpc.unary_unary_rpc_method_handler(
                handle, request_type.FromString, lambda message: message.SerializeToString()
            )

        def download(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            self.requests.append(("DownloadPersistentCacheTask", request, dict(context.invocation_metadata())))
            started = dfdaemon_pb2.DownloadPersistentCacheTaskResponse(task_id=TASK_ID)
            started.download_persistent_cache_task_started_response.content_length = self.content_length
            yield started
            offset = 0
            for number, content in enumerate(self.pieces):
                piece = dfdaemon_pb2.DownloadPersistentCacheTaskResponse(task_id=TASK_ID)
                piece.download_piece_finished_response.piece.number = number
                piece.download_piece_finished_response.piece.offset = self.offsets.get(number, offset)
                offset += len(content)
                if request.need_piece_content:
                    piece.download_piece_finished_response.piece.content = content
                yield piece

        def stat(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            # Served as a stream, so that a daemon can give a unary call more (or fewer) answers than one.
            self.requests.append(("StatPersistentCacheTask", request, dict(context.invocation_metadata())))
            if request.task_id == "c" * 64:
                context.abort(grpc.StatusCode.NOT_FOUND, "task cccc not found")
            answers = 0
            while self.stat_answers < 0 or answers < self.stat_answers:
                answers += 1
                yield self.task

        handler = grpc.method_handlers_generic_handler(
            "dfdaemon.v2.DfdaemonDownload",
            {
                "UploadPersistentCacheTask": unary(
                    "UploadPersistentCacheTask", dfdaemon_pb2.UploadPersistentCacheTaskRequest, lambda: self.task
                ),
                "StatPersistentCacheTask": grpc.unary_stream_rpc_method_handler(
                    stat,
                    dfdaemon_pb2.StatPersistentCacheTaskRequest.FromString,
                    lambda message: message.SerializeToString(),
                ),
                "DeleteTask": unary("DeleteTask", dfdaemon_pb2.DeleteTaskRequest, empty_pb2.Empty),
                "DownloadPersistentCacheTask": grpc.unary_stream_rpc_method_handler(
                    download,
                    dfdaemon_pb2.DownloadPersistentCacheTaskRequest.FromString,
                    lambda message: message.SerializeToString(),
                ),
            },
        )
        self.server = grpc.server(futures.ThreadPoolExecutor(2))
        self.server.add_generic_rpc_handlers((handler,))
        self.server.add_insecure_port(f"unix:{self.path}")
        self.server.start()


@pytest.fixture
def daemon() -> Iterator[StandIn]:
    directory = Path(tempfile.mkdtemp(prefix="df-"))  # a short path for the socket
    stand_in = StandIn(directory)
    yield stand_in
    stand_in.server.stop(None).wait(5)
    shutil.rmtree(directory, ignore_errors=True)


def test_stat_shows_the_task_with_the_daemons_words_escaped(
    daemon: StandIn, capsys: pytest.CaptureFixture[str]
) -> None:
    assert dfcache.main(["stat", TASK_ID, "-e", daemon.path]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"id: {TASK_ID}",
        "state: Succeeded",
        "content length: 10",
        f"piece length: {4 << 20} (1 pieces)",
        "persistent replicas: 1 of 2",
        "other replicas: 3",
        "ttl: 3600.5s, created 2025-12-02T00:00:00Z",
        "tag: t\\x1b[2J",
    ]
    ((name, request, _),) = daemon.requests
    assert (name, request) == ("StatPersistentCacheTask", dfdaemon_pb2.StatPersistentCacheTaskRequest(task_id=TASK_ID))


def test_import_sends_what_the_flags_say(daemon: StandIn, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x")
    argv = ["import", str(tmp_path / "f"), "--ttl", "2h", "--tag", "v1", "--piece-length", "8MiB", "--timeout", "90s"]
    assert dfcache.main([*argv, "-e", daemon.path]) == 0
    assert capsys.readouterr().out == f"{TASK_ID}\n"
    ((name, request, _),) = daemon.requests
    assert name == "UploadPersistentCacheTask"
    assert request == dfdaemon_pb2.UploadPersistentCacheTaskRequest(
        path=str(tmp_path / "f"),
        persistent_replica_count=2,
        tag="v1",
        application="",
        piece_length=8 << 20,
        ttl=duration_pb2.Duration(seconds=7200),
        timeout=duration_pb2.Duration(seconds=90),
    )
    assert not request.HasField("content_for_calculating_task_id")


def test_delete_names_the_task_type(daemon: StandIn) -> None:
    assert dfcache.main(["delete", TASK_ID, "-e", daemon.path]) == 0
    ((name, request, metadata),) = daemon.requests
    assert (name, request.task_id, metadata["dragonfly-task-type"]) == ("DeleteTask", TASK_ID, "persistent-cache")


def test_export_to_a_file_leaves_the_writing_to_the_daemon(
    daemon: StandIn, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert dfcache.main(["export", TASK_ID, "-O", str(tmp_path / "out"), "--overwrite", "-e", daemon.path]) == 0
    ((_, request, _),) = daemon.requests
    assert (request.output_path, request.need_piece_content, request.overwrite) == (str(tmp_path / "out"), False, True)
    assert capsys.readouterr().err.startswith(f"{tmp_path / 'out'}: 10 bytes in ")


def test_export_to_standard_output_writes_the_pieces(
    daemon: StandIn, capfdbinary: pytest.CaptureFixture[bytes]
) -> None:
    assert dfcache.main(["export", TASK_ID, "-O", "-", "-e", daemon.path]) == 0
    assert capfdbinary.readouterr().out == b"0123456789"
    ((_, request, _),) = daemon.requests
    assert request.need_piece_content
    assert not request.HasField("output_path")


def test_export_to_standard_output_that_falls_short_fails(
    daemon: StandIn, capfdbinary: pytest.CaptureFixture[bytes]
) -> None:
    daemon.pieces = [b"0123", b"4567"]
    assert dfcache.main(["export", TASK_ID, "-O", "-", "-e", daemon.path]) == 1
    assert b"dfcache export: dfdaemon sent 8 of the task's 10 bytes" in capfdbinary.readouterr().err


def test_a_status_from_the_daemon_is_shown_by_name(daemon: StandIn, capsys: pytest.CaptureFixture[str]) -> None:
    assert dfcache.main(["stat", "c" * 64, "-e", daemon.path]) == 1
    assert capsys.readouterr().err == "dfcache stat: NOT_FOUND: task cccc not found\n"


@pytest.mark.parametrize("columns", ["50", "200", None])
def test_help_is_laid_out_as_argparses_own_formatter_does(monkeypatch: pytest.MonkeyPatch, columns: str | None) -> None:
    # dfcache's formatter only avoids importing shutil; the width (COLUMNS, else the terminal, else 80) is the same.
    import argparse

    if columns is None:
        monkeypatch.delenv("COLUMNS", raising=False)
    else:
        monkeypatch.setenv("COLUMNS", columns)
    parser = dfcache.build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for command_line in (parser, *subparsers.choices.values()):
        ours = command_line.format_help()
        command_line.formatter_class = argparse.HelpFormatter
        assert ours == command_line.format_help()


def test_export_to_standard_output_refuses_a_piece_out_of_place(
    daemon: StandIn, capfdbinary: pytest.CaptureFixture[bytes]
) -> None:
    # Same length, but the second piece claims the first one's place: written in order it would corrupt the output.
    daemon.offsets = {1: 0}
    assert dfcache.main(["export", TASK_ID, "-O", "-", "-e", daemon.path]) == 1
    captured = capfdbinary.readouterr()
    assert b"dfcache export: dfdaemon sent the piece at byte 0 where byte 4 was due" in captured.err
    assert captured.out == b"0123"


@pytest.mark.parametrize(("answers", "message"), [(0, "with no message"), (2, "with more than one message")])
def test_a_unary_call_needs_exactly_one_answer(
    daemon: StandIn, capsys: pytest.CaptureFixture[str], answers: int, message: str
) -> None:
    daemon.stat_answers = answers
    assert dfcache.main(["stat", TASK_ID, "-e", daemon.path]) == 1
    assert capsys.readouterr().err == f"dfcache stat: dfdaemon answered StatPersistentCacheTask {message}\n"


def test_a_unary_call_answered_without_end_fails_at_the_second_answer(
    daemon: StandIn, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before, every answer was kept until the call's deadline (--timeout + 10 s) and only then counted.
    daemon.stat_answers = -1
    assert dfcache.main(["stat", TASK_ID, "--timeout", "60s", "-e", daemon.path]) == 1
    assert capsys.readouterr().err == (
        "dfcache stat: dfdaemon answered StatPersistentCacheTask with more than one message\n"
    )
