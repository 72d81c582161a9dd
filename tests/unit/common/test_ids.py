import hashlib

import pytest

from dragonfly.common import ids

# The four vectors of docs/reference/protocol.md#identifiers, reproduced from Dragonfly's own tests.
VECTORS = [
    ({}, "457b4328cde278e422c9e243f7bfd1e97f511fec43a80f535cf6b0ef6b086776"),
    ({"tag": "foo", "application": "bar"}, "06408fbf247ddaca478f8cb9565fe5591c28efd0994b8fea80a6a87d3203c5ca"),
    ({"piece_length": 1024}, "9f7c9aafbc6f30f8f41a96ca77eeae80c5b60964b3034b0ee43ccf7b2f9e52b8"),
    (
        {"tag": "foo", "application": "bar", "revision": "v1.0", "piece_length": 1024},
        "5844f27a257287e9b734256bb25603d8005422ced8c0377f15063ec11963b25f",
    ),
]


@pytest.mark.parametrize(("kwargs", "expected"), VECTORS)
def test_task_id_matches_dragonfly_vectors(kwargs, expected):
    assert ids.task_id("https://example.com", **kwargs) == expected


def test_empty_tag_and_application_hash_like_none():
    assert ids.task_id("https://example.com", tag="", application="") == ids.task_id("https://example.com")


def test_filtered_query_params_are_dropped_and_rest_reserialised():
    signed = "https://bucket.s3.example.com/obj?X-Amz-Signature=abc&X-Amz-Date=20260101&versionId=a b"
    assert ids.normalize_url(signed) == "https://bucket.s3.example.com/obj?versionId=a+b"
    assert ids.task_id(signed) == ids.task_id("https://bucket.s3.example.com/obj?versionId=a%20b")


def test_query_dropped_entirely_when_every_pair_is_filtered():
    assert ids.normalize_url("https://example.com/?ns=docker.io") == "https://example.com"
    assert ids.normalize_url("https://example.com/a?Expires=1&Signature=2") == "https://example.com/a"


def test_custom_filter_list_replaces_default():
    url = "https://example.com/a?ns=x&token=secret"
    assert ids.normalize_url(url, ["token"]) == "https://example.com/a?ns=x"


def test_form_encoding_follows_whatwg_safe_set():
    assert ids.normalize_url("https://e.com/p?k=~*.-_!") == "https://e.com/p?k=%7E*.-_%21"


def test_scheme_host_and_default_port_normalised():
    assert ids.normalize_url("HTTPS://Example.COM:443/A") == "https://example.com/A"
    assert ids.normalize_url("http://example.com:8080") == "http://example.com:8080"


def test_path_percent_encoded_like_whatwg():
    assert ids.normalize_url("https://e.com/a b/é") == "https://e.com/a%20b/%C3%A9"


def test_default_filter_list_is_deduplicated_in_order():
    params = ids.DEFAULT_FILTERED_QUERY_PARAMS
    assert len(params) == len(set(params))
    assert params[0] == "X-Amz-Algorithm"
    assert params[-1] == "ns"
    assert params.index("Signature") < params.index("AccessKeyId")


def test_content_overrides_url():
    assert ids.task_id("https://x", content="hello") == hashlib.sha256(b"hello").hexdigest()


@pytest.mark.parametrize("bad", ["not a url", "example.com/path", "http://[::1/", "http://h:99999/"])
def test_invalid_url_raises_clear_error(bad):
    with pytest.raises(ids.InvalidURL, match="invalid URL"):
        ids.task_id(bad)


def test_blob_digest_task_id():
    digest = "a" * 64
    assert ids.blob_digest_task_id(f"https://r.io/v2/library/alpine/blobs/sha256:{digest}?ns=x") == digest
    assert ids.blob_digest_task_id("https://r.io/v2/library/alpine/manifests/latest") is None
    assert ids.blob_digest_task_id("https://r.io/v2/x/blobs/sha256:../../etc") is None


def test_host_peer_and_piece_ids():
    assert ids.host_id("10.0.0.1", "node-a") == "10.0.0.1-node-a"
    assert ids.host_id("10.0.0.1", "node-a", seed=True) == "10.0.0.1-node-a-seed"
    peer = ids.peer_id("10.0.0.1", "node-a", seed=True)
    assert peer.startswith("10.0.0.1-node-a-")
    assert peer.endswith("-seed")
    assert peer != ids.peer_id("10.0.0.1", "node-a", seed=True)
    assert ids.piece_id("ab" * 32, 7) == "ab" * 32 + "-7"


def test_is_task_id_refuses_paths():
    assert ids.is_task_id("0" * 64)
    assert not ids.is_task_id("../" + "0" * 61)
    assert not ids.is_task_id("A" * 64)


@pytest.mark.parametrize(
    ("url", "normalized"),
    [
        # WHATWG "special" file scheme: host lower-cased, "localhost" dropped, path encoded.
        ("file:///data/a b.bin", "file:///data/a%20b.bin"),
        ("file://LOCALHOST/data/x", "file:///data/x"),
        # Non-special schemes (object stores, HDFS, hubs): the host is opaque, kept as written; no default port;
        # an empty path stays empty.
        ("s3://MyBucket/Key%20One", "s3://MyBucket/Key%20One"),
        ("S3://bucket/dir/", "s3://bucket/dir/"),
        ("s3://bucket", "s3://bucket"),
        ("s3://bucket/", "s3://bucket"),
        ("hdfs://NameNode:9870/user/a", "hdfs://NameNode:9870/user/a"),
        ("hf://Owner/Repo/file.txt", "hf://Owner/Repo/file.txt"),
        ("gs://b/o?X-Goog-Signature=s&generation=1", "gs://b/o?generation=1"),
    ],
)
def test_file_and_non_special_schemes_normalised_like_whatwg(url: str, normalized: str) -> None:
    assert ids.normalize_url(url) == normalized


@pytest.mark.parametrize(
    ("url", "normalized"),
    [
        # "." and ".." segments (also percent-encoded) resolve as WHATWG's path parser does; the expectations were
        # cross-checked with ada-url, a WHATWG URL implementation.
        ("s3://b/a/../c", "s3://b/c"),
        ("https://e.com/a/./b", "https://e.com/a/b"),
        ("https://e.com/a/b/..", "https://e.com/a/"),
        ("https://e.com/a/%2E%2E/c", "https://e.com/c"),
        ("https://e.com/a/.%2e/b/", "https://e.com/b/"),
        ("hf://o/r/a/.", "hf://o/r/a/"),
        ("https://e.com/a/b/c/./../../g", "https://e.com/a/g"),
    ],
)
def test_dot_segments_resolved_like_whatwg(url: str, normalized: str) -> None:
    assert ids.normalize_url(url) == normalized
