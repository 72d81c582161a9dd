"""dfget's source flags and -r helpers: directory URLs, entry paths that must stay under -O, --include-files,
credentials masked in debug output."""

from __future__ import annotations

import argparse

import pytest
from dragonfly_api import common_pb2

from dragonfly.cli import dfget


def test_directory_url_ends_with_a_slash() -> None:
    assert dfget.directory_url("s3://b/prefix") == "s3://b/prefix/"
    assert dfget.directory_url("hf://acme/repo") == "hf://acme/repo/"
    assert dfget.directory_url("file:///data/") == "file:///data/"


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
    assert dfget.relative_path(base, url) == relative


@pytest.mark.parametrize(
    "url", ["s3://b/p/../../etc/passwd", "s3://b/other/a", "s3://c/p/a", "s3://b/p/", "s3://b/p/a//b", "gs://b/p/a"]
)
def test_entries_that_would_leave_the_output_directory_are_refused(url: str) -> None:
    with pytest.raises(dfget.DownloadFailed):
        dfget.relative_path("s3://b/p/", url)


def test_include_files() -> None:
    assert dfget.included("a.bin", [])
    assert dfget.included("weights/x.bin", ["weights"])
    assert dfget.included("weights/x.bin", ["weights/"])
    assert dfget.included("weights/x.bin", ["*/*.bin"])
    assert not dfget.included("weights2/x.bin", ["weights"])
    assert not dfget.included("config.json", ["*.bin"])


@pytest.mark.parametrize("bad", ["/abs", "../up", "a/../b", "./a", "a//b", ""])
def test_include_entries_must_be_relative_paths(bad: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        dfget._include(bad)


def test_source_flags_reach_the_download_and_debug_output_masks_them() -> None:
    parser = dfget.build_parser()
    args = parser.parse_args(
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
    storage = dfget.object_storage_message(args)
    assert storage.endpoint == "http://minio:9000"
    assert storage.access_key_secret == "s3cr3t-value"
    download = common_pb2.Download(url="s3://b/k", object_storage=storage)
    shown = dfget.describe_download(download)
    assert "s3cr3t-value" not in shown
    assert "AKID" in shown

    hub = parser.parse_args(["hf://acme/m/f.bin", "-O", "/tmp/x", "--hf-token", "hf_tok", "--hf-revision", "v2"])
    download = common_pb2.Download(url=hub.url)
    dfget.add_source_settings(download, hub)
    assert download.hugging_face.revision == "v2"
    assert download.hugging_face.token == "hf_tok"
    assert "hf_tok" not in dfget.describe_download(download)
    assert not download.HasField("model_scope")


def test_unsupported_and_malformed_urls() -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="the supported schemes are"):
        dfget._url("ftp://h/f")
    with pytest.raises(argparse.ArgumentTypeError, match="file:///absolute/path"):
        dfget._url("file://host/etc/passwd")
    assert dfget._url("s3://bucket/key") == "s3://bucket/key"
