"""Pending jobs' registry credentials, sealed at rest with a key the operator holds (``job.secretKeyFile``).

A preheat job may carry a registry password, a username or an ``Authorization`` header until it ends; the job row
keeps them only as an AES-256-GCM envelope whose associated data is the job's id, so a copy of the database (a
backup, a PostgreSQL heap page still holding an old row version, a SQLite free page) yields no credential, and an
envelope moved onto another job does not open. The key lives outside the database: a file of 32 random bytes in
base64, generated with mode 0600 in the data directory on the first start when none is configured. Managers that
share one database must share the key; an envelope records the id of the key that sealed it (a digest, not the
key) so a manager holding another key says which one it would need.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import logging
import os
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

log = logging.getLogger(__name__)

KEY_BYTES = 32
NONCE_BYTES = 12
#: The file a manager generates in its data directory when ``job.secretKeyFile`` is unset.
DEFAULT_KEY_FILE = "job-secret.key"
FORMAT = "aes-256-gcm/v1"
_AAD_PREFIX = b"dragonfly-manager-job-secret/v1/job:"
HELP = "managers that share a database need the same job.secretKeyFile (docs/preheat.md#credentials-at-rest)"


class KeyFileError(ValueError):
    """The key file is missing, unreadable or does not hold a key; the message names the file."""


class SecretsUnavailable(RuntimeError):
    """A job's sealed credentials cannot be opened with this manager's keys; the message says why and what to do."""


def key_id(key: bytes) -> str:
    """Return the short public name of a key (a digest of it: it reveals nothing of the key)."""
    return hashlib.sha256(b"dragonfly-manager-job-secret-key-id\0" + key).hexdigest()[:16]


def _decode_key(text: str, path: Path) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise KeyFileError(f"{path}: not a base64 key (expected {KEY_BYTES} random bytes in base64)") from None
    if len(key) != KEY_BYTES:
        raise KeyFileError(f"{path}: the key is {len(key)} bytes, expected {KEY_BYTES} (base64 of 32 random bytes)")
    return key


def read_key_file(path: Path) -> bytes:
    """Read a key file; one that every user can read is used with a warning (a Secret mounted as 0644 is)."""
    try:
        text = path.read_text("ascii")
        mode = path.stat().st_mode
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"{path}: cannot read the job secret key: {exc}") from None
    # Group read is how a service group (a pod's fsGroup) shares it; others' access is what the warning is for.
    if mode & 0o007:
        log.warning("job secret key file %s is readable by every user (mode %o); 0600 is enough", path, mode & 0o777)
    return _decode_key(text, path)


def ensure_key_file(path: Path) -> bytes:
    """Return the key in ``path``, generating it (mode 0600, directory 0700) when the file does not exist.

    The new key is written to a temporary file and linked into place, so a concurrent start (or a crash mid-write)
    never leaves a short key behind: whoever links first wins and the others read its key.
    """
    if path.exists():
        return read_key_file(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as out:
            out.write(base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode("ascii") + "\n")
            out.flush()
            os.fsync(out.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(temporary, path)
            log.warning(
                "generated the job secret key %s: back it up with the database, and give it to every manager "
                "that shares the database (job.secretKeyFile)",
                path,
            )
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
    return read_key_file(path)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def is_sealed(doc: Mapping[str, Any]) -> bool:
    """Return whether a stored ``secret`` value is an envelope (rows written before sealing hold clear JSON)."""
    return doc.get("format") == FORMAT


class Sealer:
    """Seals and opens job credentials: the current key seals, the current and previous keys open."""

    def __init__(self, key: bytes, previous: Sequence[bytes] = (), *, source: str = "") -> None:
        if len(key) != KEY_BYTES or any(len(old) != KEY_BYTES for old in previous):
            raise ValueError(f"a job secret key is {KEY_BYTES} bytes")
        self.key_id = key_id(key)
        self.source = source
        self._current = AESGCM(key)
        self._keys = {key_id(k): AESGCM(k) for k in (*previous, key)}

    @classmethod
    def from_files(cls, path: Path, previous: Sequence[Path] = (), *, generate: bool = False) -> Sealer:
        """Load the keys (``generate``: create ``path`` when it does not exist); KeyFileError names a bad file."""
        key = ensure_key_file(path) if generate else read_key_file(path)
        return cls(key, [read_key_file(old) for old in previous], source=str(path))

    def seal(self, job_id: int, doc: Mapping[str, Any]) -> dict[str, Any]:
        """Return the envelope of ``doc`` for job ``job_id`` (an empty doc stays empty: nothing to hide)."""
        if not doc:
            return {}
        nonce = secrets.token_bytes(NONCE_BYTES)
        plain = json.dumps(dict(doc), separators=(",", ":"), ensure_ascii=False).encode()
        sealed = self._current.encrypt(nonce, plain, _AAD_PREFIX + str(job_id).encode())
        return {"format": FORMAT, "key_id": self.key_id, "nonce": _b64(nonce), "data": _b64(sealed)}

    def open(self, job_id: int, envelope: Mapping[str, Any]) -> dict[str, Any]:
        """Return the credentials sealed in ``envelope``; SecretsUnavailable says why they cannot be read."""
        if not envelope:
            return {}
        if not is_sealed(envelope):
            raise SecretsUnavailable(f"job {job_id}: its stored credentials are not in a format this manager reads")
        sealed_with = str(envelope.get("key_id", ""))[:64]
        aead = self._keys.get(sealed_with)
        if aead is None:
            raise SecretsUnavailable(
                f"job {job_id}: its registry credentials were sealed with job secret key {sealed_with!r}, and this "
                f"manager holds key {self.key_id!r} ({self.source or 'job.secretKeyFile'}): {HELP}"
            )
        try:
            nonce = base64.b64decode(str(envelope.get("nonce", "")), validate=True)
            data = base64.b64decode(str(envelope.get("data", "")), validate=True)
            plain = aead.decrypt(nonce, data, _AAD_PREFIX + str(job_id).encode())
            doc = json.loads(plain)
        except (binascii.Error, ValueError, InvalidTag):
            raise SecretsUnavailable(
                f"job {job_id}: its sealed registry credentials do not verify with key {sealed_with!r} "
                "(altered in the database, or copied from another job)"
            ) from None
        if not isinstance(doc, dict):
            raise SecretsUnavailable(f"job {job_id}: its sealed registry credentials are not an object")
        return doc
