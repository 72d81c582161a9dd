"""dfget's source flags and -r helpers: directory URLs, entry paths that must stay under -O, --include-files,
credentials masked in debug output."""

from __future__ import annotations

import argparse

import pytest

from dragonfly.cli.dfget import errors, parser, progress, recursive, request


def test_directory_url_ends_with_a_slash() -> None:
    assert recursive.directory_url("s3://b/prefix") == "s3://b/prefix/"
    assert recursive.directory_url("hf://acme/repo") == "hf://acme/repo/"
    assert recursive.directory_url("file:///data/") == "file:///data/"


@pytest.mark.parametrize(
    ("url", "relative"),
    [
        ("s3://b/p/a.bin", "a.bin"),
        ("s3://b/p/sub/a%20b.bin", "sub/a b.bin"),
        ("hf://acme/repo/weights/x.bin", "weights/x.bin"),
    ],
)
def test_relative_paths(url: str, relative: str) -> None:
    base = "hf://acme/repo/" if url.startswith("hf") else "s3://b/p/"
    assert recursive.relative_path(base, url) == relative


@pytest.mark.parametrize(
    "url", ["s3://b/p/../../etc/passwd", "s3://b/other/a", "s3://c/p/a", "s3://b/p/", "s3://b/p/a//b", "gs://b/p/a"]
)
def test_entries_that_would_leave_the_output_directory_are_refused(url: str) -> None:
    with pytest.raises(errors.DownloadFailed):
        recursive.relative_path("s3://b/p/", url)


def test_include_files() -> None:
    assert recursive.included("a.bin", [])
    assert recursive.included("weights/x.bin", ["weights"])
    assert recursive.included("weights/x.bin", ["weights/"])
    assert recursive.included("weights/x.bin", ["*/*.bin"])
    assert not recursive.included("weights2/x.bin", ["weights"])
    assert not recursive.included("config.json", ["*.bin"])


@pytest.mark.parametrize("bad", ["/abs", "../up", "a/../b", "./a", "a//b", ""])
def test_include_entries_must_be_relative_paths(bad: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parser._include(bad)


def test_source_flags_reach_the_download_and_debug_output_masks_them() -> None:
    command_line = parser.build_parser()
    args = command_line.parse_args(
        [
            "s3://b/k",
            "-O",
            "/tmp/x",
            "--storage-endpoint",
            "http://minio:9000",
            "--storage-access-key-id",
            "AKID",
            "--storage-access-key-secret",
            "s3cr3t-value",
        ]
    )
    settings = request.source_settings(args.url, args)
    assert settings["object_storage"]["endpoint"] == "http://minio:9000"
    assert settings["object_storage"]["access_key_secret"] == "s3cr3t-value"
    shown = request.describe_download({"url": "s3://b/k", **settings})
    assert "s3cr3t-value" not in shown
    assert "AKID" in shown

    hub = command_line.parse_args(["hf://acme/m/f.bin", "-O", "/tmp/x", "--hf-token", "hf_tok", "--hf-revision", "v2"])
    download = {"url": hub.url, **request.source_settings(hub.url, hub)}
    assert download["hugging_face"]["revision"] == "v2"
    assert download["hugging_face"]["token"] == "hf_tok"
    assert "hf_tok" not in request.describe_download(download)
    assert "model_scope" not in download


def test_unsupported_and_malformed_urls() -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="the supported schemes are"):
        parser._url("ftp://h/f")
    with pytest.raises(argparse.ArgumentTypeError, match="file:///absolute/path"):
        parser._url("file://host/etc/passwd")
    assert parser._url("s3://bucket/key") == "s3://bucket/key"


class _Entry:
    def __init__(self, url: str, content_length: int, is_dir: bool = False) -> None:
        self.url, self.content_length, self.is_dir = url, content_length, is_dir


def _recursive_args(tmp_path: object, *extra: str) -> argparse.Namespace:
    return parser.build_parser().parse_args(["s3://b/p", "-O", str(tmp_path), "-r", *extra])


def test_recursive_downloads_each_file_and_counts_the_whole(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    entries = [_Entry("s3://b/p/a.bin", 10), _Entry("s3://b/p/d/", 0, True), _Entry("s3://b/p/d/b.bin", 5)]
    monkeypatch.setattr(recursive, "list_entries", lambda args, url: entries)
    calls: list[tuple[str, str]] = []

    def fake_download(args: argparse.Namespace, output: str, began: float, on_progress: object = None) -> object:
        calls.append((args.url, output))
        assert args.no_progress  # one bar for the whole set, not one per file
        traffic = progress.Traffic()
        traffic.peers = 10 if output.endswith("a.bin") else 5
        with open(output, "wb") as f:
            f.write(b"x")
        return traffic

    monkeypatch.setattr(recursive, "download", fake_download)
    count, size, traffic = recursive.download_directory(_recursive_args(tmp_path), str(tmp_path), 0.0)
    assert (count, size, traffic.peers) == (2, 15, 15)
    assert sorted(calls) == [("s3://b/p/a.bin", f"{tmp_path}/a.bin"), ("s3://b/p/d/b.bin", f"{tmp_path}/d/b.bin")]


def test_recursive_stops_at_the_first_failure_and_names_the_file(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    entries = [_Entry(f"s3://b/p/f{i}", 1) for i in range(6)]
    monkeypatch.setattr(recursive, "list_entries", lambda args, url: entries)
    started: list[str] = []

    def fake_download(args: argparse.Namespace, output: str, began: float, on_progress: object = None) -> object:
        started.append(args.url)
        raise errors.DownloadFailed("download failed: no such object (HTTP 404)")

    monkeypatch.setattr(recursive, "download", fake_download)
    args = _recursive_args(tmp_path, "--max-concurrent-requests", "1")
    with pytest.raises(errors.DownloadFailed, match=r"^f0: download failed: no such object"):
        recursive.download_directory(args, str(tmp_path), 0.0)
    assert started == ["s3://b/p/f0"]


@pytest.mark.parametrize("columns", ["50", "200", None, "junk"])
def test_help_is_laid_out_as_argparses_own_formatter_does(monkeypatch: pytest.MonkeyPatch, columns: str | None) -> None:
    # dfget's formatter only avoids importing shutil; the width (COLUMNS, else the terminal, else 80) is the same.
    if columns is None:
        monkeypatch.delenv("COLUMNS", raising=False)
    else:
        monkeypatch.setenv("COLUMNS", columns)
    command_line = parser.build_parser()
    ours = command_line.format_help()
    command_line.formatter_class = argparse.HelpFormatter
    assert ours == command_line.format_help()
