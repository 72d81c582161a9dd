"""The blobs an image manifest passing through the proxy names, and the requests a runtime will make for them.

A runtime GETs an image's manifest, then its config and layers. When the manifest goes through this proxy (it is
forwarded, not a swarm download), its blob list says which blob GETs come next; the proxy uses that to start the
origin-head gate's scheduler round trip for each of them at once (``OriginHeadGate.prepare``), so the answer is in,
or on its way, when the blob GET arrives. Only a hint: anything unexpected (another media type, bad JSON, a
malformed digest, more than ``MAX_BLOBS``) yields fewer blobs or none, never an error, and a blob GET the hint got
wrong (another task id) simply asks the scheduler itself.
"""

from __future__ import annotations

import json
import re

from dragonfly.common.oci import MANIFEST_MEDIA_TYPES

#: The most blobs one manifest prepares: a runtime's first wave of blob GETs (containerd fetches 3 at a time). Later
#: GETs wait for a layer to finish, mostly past ``STAT_TIMEOUT``, and each prepared question costs the peer's event
#: loop a little just when those first GETs arrive; it also bounds the round trips one request can cause.
MAX_BLOBS = 4
#: Larger manifests are not kept nor parsed for the hint: a 100-layer manifest is ~25 KiB, and parsing JSON runs on
#: the proxy's event loop (the spec's 4 MiB would hold it for tens of milliseconds on an upstream's say-so).
MAX_SIZE = 256 * 1024

_MANIFEST_PATH = re.compile(r"^(?P<prefix>/v2/.+)/manifests/(?P<reference>[^/?#]+)(?P<query>\?[^#]*)?$")
_DIGEST = re.compile(r"^sha256:[a-f0-9]{64}$")


def is_manifest_get(method: str, target: str) -> bool:
    """Tell whether an origin-form request target is a registry manifest GET (``GET /v2/<name>/manifests/<ref>``)."""
    return method == "GET" and _MANIFEST_PATH.match(target) is not None


def blob_target(manifest_target: str, digest: str) -> str:
    """Return the target of the blob GET that goes with a manifest GET's target (same repository, same query)."""
    match = _MANIFEST_PATH.match(manifest_target)
    if match is None:
        raise ValueError(f"not a manifest target: {manifest_target[:200]!r}")
    return f"{match['prefix']}/blobs/{digest}{match['query'] or ''}"


def blob_digests(content_type: str, body: bytes, *, larger_than: int = 0) -> list[str]:
    """Return the sha256 digests of an image manifest's config and layers larger than ``larger_than`` bytes (by
    their descriptors' sizes), in that order, at most ``MAX_BLOBS``.

    Indexes (manifest lists) name manifests, not blobs: none. So does anything that is not a Docker schema 2 or OCI
    image manifest of at most ``MAX_SIZE`` bytes.
    """
    media_type = content_type.partition(";")[0].strip().lower()
    if media_type not in MANIFEST_MEDIA_TYPES or len(body) > MAX_SIZE:
        return []
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        return []
    if not isinstance(doc, dict):
        return []
    descriptors = [doc.get("config")]
    layers = doc.get("layers")
    if isinstance(layers, list):
        descriptors += layers
    digests: list[str] = []
    for descriptor in descriptors:
        if not isinstance(descriptor, dict):
            continue
        digest, size = descriptor.get("digest"), descriptor.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size <= larger_than:
            continue
        if isinstance(digest, str) and _DIGEST.match(digest) and digest not in digests:
            digests.append(digest)
            if len(digests) == MAX_BLOBS:
                break
    return digests
