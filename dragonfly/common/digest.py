"""Dragonfly digest strings (``algorithm:encoded``): parse, format, compute and verify.

Dragonfly's forms (``docs/reference/protocol.md#vortex``, ``#digests``):

- ``crc32:<decimal>``: CRC-32/IEEE as a decimal u32 without zero padding. Every piece digest has this form, and
  peers compare piece digests as strings, so only the canonical spelling is accepted.
- ``sha256:<64 hex>`` and ``sha512:<128 hex>``: whole-file digests, lower-case hex (what Dragonfly computes).

Quirk: for a whole-file ``--digest crc32:...`` Dragonfly's own parser demands exactly 10 characters, so a file
whose CRC-32 has fewer than 10 decimal digits cannot be verified by Dragonfly peers. We accept any canonical
decimal u32 here; callers that forward a whole-file crc32 digest to Dragonfly peers should prefer sha256.

Our own extensions, never sent to Dragonfly peers: ``crc32c:<decimal>`` and ``blake3:<64 hex>``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from dragonfly.common.errors import DigestMismatch, InvalidDigest

#: Algorithms Dragonfly itself understands, in the order its documentation lists them.
DRAGONFLY_ALGORITHMS = ("crc32", "sha256", "sha512")
#: Algorithms only this implementation understands.
EXTENSION_ALGORITHMS = ("crc32c", "blake3")
ALGORITHMS = DRAGONFLY_ALGORITHMS + EXTENSION_ALGORITHMS

_CRC_MAX = 0xFFFFFFFF
# Decimal without leading zeros ("0" itself is fine); at most 10 digits, range-checked separately.
_DECIMAL = re.compile(r"0|[1-9][0-9]{0,9}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX128 = re.compile(r"[0-9a-f]{128}")

_EXPECTED = {
    "crc32": f"a decimal CRC-32 between 0 and {_CRC_MAX} without leading zeros",
    "crc32c": f"a decimal CRC-32C between 0 and {_CRC_MAX} without leading zeros",
    "sha256": "64 lower-case hex digits",
    "sha512": "128 lower-case hex digits",
    "blake3": "64 lower-case hex digits",
}


def _quote(text: str) -> str:
    # Digests arrive from the network and the command line: keep the error readable even for garbage.
    return repr(text) if len(text) <= 160 else f"{text[:160]!r}..."


def _is_valid(algorithm: str, encoded: str) -> bool:
    if algorithm in ("crc32", "crc32c"):
        return _DECIMAL.fullmatch(encoded) is not None and int(encoded) <= _CRC_MAX
    pattern = _HEX128 if algorithm == "sha512" else _HEX64
    return pattern.fullmatch(encoded) is not None


@dataclass(frozen=True, slots=True)
class Digest:
    """A validated digest; ``str()`` gives the wire form ``algorithm:encoded``."""

    algorithm: str
    encoded: str

    def __post_init__(self) -> None:
        text = f"{self.algorithm}:{self.encoded}"
        if self.algorithm not in ALGORITHMS:
            raise InvalidDigest(
                f"invalid digest {_quote(text)}: unknown algorithm {_quote(self.algorithm)}, "
                f"expected one of {', '.join(ALGORITHMS)}"
            )
        if not _is_valid(self.algorithm, self.encoded):
            raise InvalidDigest(
                f"invalid digest {_quote(text)}: expected {_EXPECTED[self.algorithm]} after '{self.algorithm}:'"
            )

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.encoded}"


def parse_digest(text: str) -> Digest:
    """Parse ``algorithm:encoded``, raising InvalidDigest that quotes the input and says what was expected."""
    algorithm, colon, encoded = text.partition(":")
    if not colon:
        raise InvalidDigest(
            f"invalid digest {_quote(text)}: expected '<algorithm>:<value>' "
            f"with algorithm one of {', '.join(ALGORITHMS)}"
        )
    return Digest(algorithm, encoded)


def is_valid_digest(text: str) -> bool:
    """Return whether ``parse_digest(text)`` would accept ``text``, without building a Digest or an error message
    (a scheduler checks the digest of every piece report)."""
    algorithm, colon, encoded = text.partition(":")
    return bool(colon) and algorithm in ALGORITHMS and _is_valid(algorithm, encoded)


def format_piece_digest(crc: int) -> str:
    """Return a piece's digest string, e.g. ``crc32:3299754941``, from its CRC-32."""
    if not 0 <= crc <= _CRC_MAX:
        raise ValueError(f"a CRC-32 is between 0 and {_CRC_MAX}, got {crc}")
    return f"crc32:{crc}"


def _encode(algorithm: str, raw: bytes) -> str:
    if algorithm in ("crc32", "crc32c"):
        return str(int.from_bytes(raw, "big"))
    return raw.hex()


def compute_file_digest(algorithm: str, path: str | os.PathLike[str]) -> Digest:
    """Return the digest of the whole file at ``path`` (native code, GIL released: call it off the event loop)."""
    if algorithm not in ALGORITHMS:
        raise InvalidDigest(f"unknown digest algorithm {_quote(algorithm)}, expected one of {', '.join(ALGORITHMS)}")
    # Imported here so that parsing digests (dfget's --digest) never loads the compiled extensions.
    from dragonfly.common import native

    return Digest(algorithm, _encode(algorithm, native.file_digest(algorithm, path)))


def verify_file_digest(path: str | os.PathLike[str], expected: Digest) -> None:
    """Raise DigestMismatch unless the file at ``path`` has the ``expected`` digest."""
    actual = compute_file_digest(expected.algorithm, path)
    if actual != expected:
        raise DigestMismatch(str(expected), str(actual), what=f"file {os.fspath(path)!r}")
