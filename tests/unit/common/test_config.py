import dataclasses
import enum
import logging

import pytest

from dragonfly.common.config import (
    Duration,
    Rate,
    Size,
    camel_case,
    load_config,
    parse_duration,
    parse_rate,
    parse_size,
)
from dragonfly.common.errors import ConfigError

MiB = 1024 * 1024


class Mode(enum.Enum):
    SUPER = "super"
    NORMAL = "normal"


@dataclasses.dataclass(frozen=True, slots=True)
class Server:
    ip: str = "0.0.0.0"
    port: int = 4000


@dataclasses.dataclass(frozen=True, slots=True)
class Download:
    server: Server = dataclasses.field(default_factory=Server)
    piece_timeout: Duration = Duration(360)
    bandwidth_limit: Rate = Rate(50e9)
    concurrent_piece_count: int = 8

    def validate(self) -> None:
        if self.concurrent_piece_count < 1:
            raise ValueError("concurrentPieceCount must be >= 1")


@dataclasses.dataclass(frozen=True, slots=True)
class Gc:
    disk_threshold: Size = Size(0)
    disk_high_threshold_percent: float = dataclasses.field(
        default=80.0, metadata={"aliases": ("distHighThresholdPercent",)}
    )


@dataclasses.dataclass(frozen=True, slots=True)
class Root:
    download: Download = dataclasses.field(default_factory=Download)
    gc: Gc = dataclasses.field(default_factory=Gc)
    addrs: tuple[str, ...] = ()
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    mode: Mode = Mode.SUPER
    dir: str | None = None
    keep: bool = False


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_defaults_without_file():
    cfg = load_config(Root, None)
    assert cfg.download.server.port == 4000
    assert cfg.download.piece_timeout == 360.0
    assert cfg.mode is Mode.SUPER


def test_camel_case_keys_and_human_values(tmp_path):
    path = write(
        tmp_path,
        """
download:
  server: {port: 4100}
  pieceTimeout: 1m30s
  bandwidthLimit: 20MiB/s
  concurrentPieceCount: 16
gc:
  diskThreshold: 10GiB
  distHighThresholdPercent: 90
addrs: [a:1, b:2]
headers: {X-A: b}
mode: normal
dir: /tmp/x
keep: true
""",
    )
    cfg = load_config(Root, path)
    assert cfg.download.server == Server(port=4100)
    assert cfg.download.piece_timeout == 90.0
    assert cfg.download.bandwidth_limit == 20 * MiB
    assert cfg.download.concurrent_piece_count == 16
    assert cfg.gc.disk_threshold == 10 * 1024**3
    assert cfg.gc.disk_high_threshold_percent == 90.0
    assert cfg.addrs == ("a:1", "b:2")
    assert cfg.headers == {"X-A": "b"}
    assert cfg.mode is Mode.NORMAL
    assert (cfg.dir, cfg.keep) == ("/tmp/x", True)


def test_overrides_merge_into_file(tmp_path):
    path = write(tmp_path, "download: {concurrentPieceCount: 4, server: {ip: 127.0.0.1}}\n")
    cfg = load_config(Root, path, overrides={"download": {"server": {"port": 0}}})
    assert cfg.download.server == Server(ip="127.0.0.1", port=0)
    assert cfg.download.concurrent_piece_count == 4


@pytest.mark.parametrize(
    ("text", "key", "message"),
    [
        ("download: {pieceTimeout: soon}", "download.pieceTimeout", "expected a duration"),
        ("download: {server: {port: '80x'}}", "download.server.port", "expected an integer"),
        ("download: {bandwidthLimit: fast}", "download.bandwidthLimit", "expected a rate"),
        ("gc: {diskThreshold: -1}", "gc.diskThreshold", "non-negative"),
        ("mode: hyper", "mode", "expected one of 'super', 'normal'"),
        ("keep: yes please", "keep", "expected true or false"),
        ("addrs: a:1", "addrs", "expected a list"),
        ("download: 3", "download", "expected a mapping"),
        ("download: {concurrentPieceCount: 0}", "download", "concurrentPieceCount must be >= 1"),
    ],
)
def test_errors_name_file_and_key(tmp_path, text, key, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(Root, path)
    assert str(info.value).startswith(f"{path}: {key}: ")
    assert message in str(info.value)
    assert info.value.key == key


def test_unknown_keys_warn_and_are_ignored(tmp_path, caplog):
    path = write(tmp_path, "download: {concurrentPieceCount: 2, quicPort: 1}\nmystery: 1\n")
    with caplog.at_level(logging.WARNING):
        cfg = load_config(Root, path)
    assert cfg.download.concurrent_piece_count == 2
    assert "download.quicPort" in caplog.text
    assert "mystery" in caplog.text


def test_unreadable_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(Root, tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(Root, write(tmp_path, "a: [1,\n"))
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(Root, write(tmp_path, "- 1\n"))


def test_parsers():
    assert parse_size("4MiB") == 4 * MiB
    assert parse_size("1.5GB") == 1_500_000_000
    assert parse_size(512) == 512
    assert parse_duration("1h30m") == 5400.0
    assert parse_duration("250ms") == 0.25
    assert parse_rate("800Mbit") == 100_000_000
    assert parse_rate("1Mbit/s") == 125_000
    assert parse_rate("20MiB/s") == 20 * MiB
    assert parse_rate("1Gbps") == 125_000_000
    for bad, parser in [
        ("4 parsecs", parse_size),
        ("1h30", parse_duration),
        ("30x", parse_duration),
        ("", parse_duration),
        ("4MBbit", parse_rate),
        (True, parse_size),
    ]:
        with pytest.raises(ValueError, match="expected"):
            parser(bad)


def test_camel_case():
    assert camel_case("concurrent_piece_count") == "concurrentPieceCount"
    assert camel_case("dir") == "dir"
