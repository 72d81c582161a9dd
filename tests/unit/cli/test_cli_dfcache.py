"""dfcache's command line: what it refuses before it talks to a daemon, and a daemon that is not there."""

from __future__ import annotations

from pathlib import Path

import pytest

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
