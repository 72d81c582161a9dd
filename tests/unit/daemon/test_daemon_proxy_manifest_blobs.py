"""The blobs of an image manifest the proxy forwards (proxy/manifest_blobs.py): a hint, so never an error."""

from __future__ import annotations

import json

import pytest

from dragonfly.common.oci import DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST
from dragonfly.daemon.proxy.manifest_blobs import MAX_BLOBS, MAX_SIZE, blob_digests, blob_target, is_manifest_get

CONFIG = "sha256:" + "c" * 64
LAYERS = ["sha256:" + str(i) * 64 for i in range(1, 4)]


def _manifest(config: object = CONFIG, layers: object = None) -> bytes:
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 10},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": 100} for d in layers]
        if layers is not None
        else [{"digest": d, "size": 100 * (i + 1)} for i, d in enumerate(LAYERS)],
    }
    return json.dumps(doc).encode()


def test_an_image_manifest_names_its_config_and_layers_in_order() -> None:
    assert blob_digests(OCI_MANIFEST, _manifest()) == [CONFIG, *LAYERS]
    assert blob_digests(f"{DOCKER_MANIFEST}; charset=utf-8", _manifest()) == [CONFIG, *LAYERS]


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        (OCI_INDEX, _manifest()),  # an index names manifests, not blobs
        ("application/json", _manifest()),
        (OCI_MANIFEST, b"{not json"),
        (OCI_MANIFEST, b"[1, 2]"),
        (OCI_MANIFEST, b"[" * 100000),
        (OCI_MANIFEST, _manifest() + b" " * MAX_SIZE),
    ],
)
def test_anything_else_names_no_blob(content_type: str, body: bytes) -> None:
    assert blob_digests(content_type, body) == []


def test_malformed_or_repeated_digests_are_skipped_and_the_count_is_bounded() -> None:
    odd = ["sha256:" + "A" * 64, "sha512:" + "1" * 128, "sha256:../../x", 7, LAYERS[0]]
    assert blob_digests(OCI_MANIFEST, _manifest(config={"x": 1}, layers=[*odd, LAYERS[1]])) == LAYERS[:2]
    many = [f"sha256:{i:064x}" for i in range(MAX_BLOBS + 10)]
    assert blob_digests(OCI_MANIFEST, _manifest(layers=many)) == [CONFIG, *many[: MAX_BLOBS - 1]]


def test_blobs_no_larger_than_the_head_or_without_a_size_are_left_out() -> None:
    assert blob_digests(OCI_MANIFEST, _manifest(), larger_than=100) == LAYERS[1:]
    assert blob_digests(OCI_MANIFEST, _manifest(), larger_than=300) == []
    doc = json.loads(_manifest())
    doc["layers"][1]["size"] = "200"
    doc["layers"][2]["size"] = True
    del doc["config"]["size"]
    assert blob_digests(OCI_MANIFEST, json.dumps(doc).encode()) == [LAYERS[0]]


def test_the_blob_get_follows_the_manifest_get_s_repository_and_query() -> None:
    assert is_manifest_get("GET", "/v2/team/app/manifests/v1?ns=docker.io")
    assert not is_manifest_get("HEAD", "/v2/team/app/manifests/v1")
    assert not is_manifest_get("GET", "/v2/team/app/blobs/" + CONFIG)
    assert not is_manifest_get("GET", "http://registry/v2/team/app/manifests/v1")
    assert blob_target("/v2/team/app/manifests/v1?ns=docker.io", CONFIG) == f"/v2/team/app/blobs/{CONFIG}?ns=docker.io"
    assert blob_target(f"/v2/a/manifests/{LAYERS[0]}", CONFIG) == f"/v2/a/blobs/{CONFIG}"
    with pytest.raises(ValueError, match="not a manifest target"):
        blob_target("/v2/a/tags/list", CONFIG)
