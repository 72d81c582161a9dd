"""Object storage back-to-source: S3 and the S3-compatible stores (OSS, OBS, COS, MinIO...), GCS and Azure Blob,
through ``obstore`` (docs/backends.md#object-storage).

``obstore`` (Rust's ``object_store`` under a small Python API) is asynchronous on the event loop: a piece is one
ranged GET whose body arrives as chunks, gathered into the pooled buffer and written by the native piece writer on
the executor (``PieceWriter``). One store (its connection pool) is kept per bucket and set of credentials.

Credentials come from the request (``Download.object_storage``, dfget's ``--storage-*`` flags) and only from it: a
request without them is sent unsigned, never with credentials the daemon finds in its environment or a cloud
metadata service, so no peer can make a seed peer use the seed's own rights. They are never logged, stored, put in
a task id or shown in an error (the store's messages are scrubbed of them).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import socket
from collections import OrderedDict
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from datetime import timedelta
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from dragonfly_api import common_pb2

import dragonfly
from dragonfly.common.errors import OriginAddressRefused
from dragonfly.common.netguard import AddressPolicy
from dragonfly.common.redact import MASK
from dragonfly.daemon.backends.base import Entry, PieceWriter, SourceOptions, StatResult
from dragonfly.daemon.backends.piece_chunks import PieceDigest
from dragonfly.daemon.blocking import run_blocking
from dragonfly.daemon.errors import BackendError

#: The S3 API family (one client, different default addressing).
S3_SCHEMES = ("s3", "oss", "obs", "cos")
#: Every scheme this module serves: S3-compatible, GCS (``gs``, as Dragonfly names it), Azure Blob (``abs``).
SCHEMES = (*S3_SCHEMES, "gs", "abs")
ADDRESSING_STYLES = ("auto", "path", "virtualHosted")
MAX_ENTRIES = 100_000
_STORES = 64
_CHUNK = 1024 * 1024
_CONNECT_TIMEOUT = timedelta(seconds=3)
_STATUS = re.compile(r"status(?: code)?:? (\d{3})")
_XML_FIELD = re.compile(r"<(Code|Message)>([^<]{0,300})</\1>")


def split_url(url: str) -> tuple[str, str, str]:
    """Return (scheme, bucket, key) of ``s3://bucket/key`` (the key percent-decoded, without its leading /)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise BackendError(f"not an object storage URL: {scheme}://")
    bucket = parts.netloc.rpartition("@")[2]
    if not bucket:
        raise BackendError(f"{scheme}:// URL without a bucket: expected {scheme}://bucket/key")
    return scheme, bucket, unquote(parts.path.lstrip("/"))


class ObjectStorageBackend:
    """The s3, oss, obs, cos, gs and abs schemes."""

    def __init__(
        self,
        *,
        executor: Executor,
        max_retries: int,
        piece_timeout: float,
        address_policy: AddressPolicy | None = None,
        addressing_style: str = "auto",
    ) -> None:
        if addressing_style not in ADDRESSING_STYLES:
            raise ValueError(f"addressingStyle must be one of {', '.join(ADDRESSING_STYLES)}, got {addressing_style!r}")
        self._executor = executor
        self._max_retries = max_retries
        self._timeout = piece_timeout
        self._policy = address_policy or AddressPolicy()
        self._style = addressing_style
        self._stores: OrderedDict[bytes, Any] = OrderedDict()

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        self._stores.clear()

    # ------------------------------------------------------------------ stores

    async def _store(self, scheme: str, bucket: str, storage: common_pb2.ObjectStorage, guarded: bool) -> Any:
        key = hashlib.sha256(
            b"\0".join([scheme.encode(), bucket.encode(), storage.SerializeToString(deterministic=True)])
            + (b"\0guarded" if guarded else b"")
        ).digest()
        store = self._stores.get(key)
        if store is None:
            # Building a store's HTTP client reads the system's CA certificates: not on the event loop.
            store = await run_blocking(self._executor, self._new_store, scheme, bucket, storage, guarded)
            self._stores[key] = store
            while len(self._stores) > _STORES:
                self._stores.popitem(last=False)
        else:
            self._stores.move_to_end(key)
        return store

    def _new_store(self, scheme: str, bucket: str, storage: common_pb2.ObjectStorage, guarded: bool) -> Any:
        from obstore.store import AzureStore, GCSStore, S3Store

        endpoint = storage.endpoint.strip()
        if endpoint and "://" not in endpoint:
            endpoint = f"https://{endpoint}"
        client: Any = {
            "allow_http": endpoint.startswith("http://"),
            "allow_invalid_certificates": storage.insecure_skip_verify,
            "connect_timeout": _CONNECT_TIMEOUT,
            "timeout": timedelta(seconds=self._timeout),
            "user_agent": f"dragonfly/{dragonfly.__version__}",
        }
        retry: Any = {
            "max_retries": self._max_retries,
            "retry_timeout": timedelta(seconds=self._timeout),
            "backoff": {"init_backoff": timedelta(seconds=0.2), "max_backoff": timedelta(seconds=5), "base": 2},
        }
        config: Any
        if scheme in S3_SCHEMES:
            config = {"region": storage.region or "us-east-1"}
            if scheme != "s3" and not endpoint:
                raise BackendError(f"{scheme}:// needs the store's endpoint (dfget --storage-endpoint)")
            virtual = self._style == "virtualHosted" or (self._style == "auto" and (scheme != "s3" or not endpoint))
            config["virtual_hosted_style_request"] = virtual
            if endpoint:
                if virtual:
                    # object_store expects the bucket in a virtual-hosted endpoint.
                    head, sep, rest = endpoint.partition("://")
                    endpoint = f"{head}{sep}{bucket}.{rest}"
                config["endpoint"] = endpoint
            if storage.access_key_id and storage.access_key_secret:
                config["access_key_id"] = storage.access_key_id
                config["secret_access_key"] = storage.access_key_secret
                token = storage.session_token or storage.security_token
                if token:
                    config["session_token"] = token
            else:
                config["skip_signature"] = True
            return S3Store(bucket, config=config, client_options=client, retry_config=retry)
        if scheme == "gs":
            config = {}
            if endpoint:
                config["base_url"] = endpoint
            if storage.credential_path:
                if guarded:
                    # A path on this host's disk, named by another host: never read on its behalf.
                    raise BackendError(
                        "gs:// credential_path names a file on the daemon's host and is honoured only for requests "
                        "made on this host"
                    )
                config["service_account_path"] = storage.credential_path
            else:
                config["skip_signature"] = True
            return GCSStore(bucket, config=config, client_options=client, retry_config=retry)
        # abs: the account name and key travel as the access key id and secret, as in Dragonfly.
        config = {"container_name": bucket}
        if storage.access_key_id:
            config["account_name"] = storage.access_key_id
        if endpoint:
            config["endpoint"] = endpoint
        if storage.access_key_id and storage.access_key_secret:
            config["account_key"] = storage.access_key_secret
        elif storage.session_token or storage.security_token:
            config["sas_key"] = storage.session_token or storage.security_token
        else:
            config["skip_signature"] = True
        return AzureStore(config=config, client_options=client, retry_config=retry)

    async def _check_endpoint(self, scheme: str, storage: common_pb2.ObjectStorage, guarded: bool) -> None:
        """Refuse, for a download another host asked for, an endpoint that resolves to an address the SSRF guard
        refuses (docs/security.md#origin-addresses). The HTTP client of the store is not ours to hook, so this
        checks the addresses once before the request; public endpoints (no endpoint given) need no check."""
        endpoint = storage.endpoint.strip()
        if not guarded or not endpoint:
            return
        host = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}").hostname or ""
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise BackendError(
                f"{scheme}:// endpoint host {host!r} cannot be resolved: {exc.strerror or exc}"
            ) from None
        try:
            for info in infos:
                self._policy.check(str(info[4][0]), host)
        except OriginAddressRefused as exc:
            raise BackendError(str(exc)) from None

    async def _prepare(self, url: str, options: SourceOptions) -> tuple[Any, str, str, common_pb2.ObjectStorage]:
        scheme, bucket, key = split_url(url)
        storage = options.object_storage or common_pb2.ObjectStorage()
        await self._check_endpoint(scheme, storage, options.origin.guarded)
        try:
            store = await self._store(scheme, bucket, storage, options.origin.guarded)
        except BackendError:
            raise
        except Exception as exc:
            raise BackendError(
                f"{scheme}://{bucket}: invalid object storage settings: {_scrub(exc, storage)}"
            ) from None
        return store, scheme, key, storage

    # ------------------------------------------------------------------ the interface

    async def stat(self, url: str, request_header: Mapping[str, str], options: SourceOptions) -> StatResult:
        import obstore

        store, _scheme, key, storage = await self._prepare(url, options)
        if not key or key.endswith("/"):
            raise BackendError(f"{url}: names a directory (download it with -r)")
        try:
            async with asyncio.timeout(self._timeout):
                meta = await obstore.head_async(store, key)
        except Exception as exc:
            error = _error(url, exc, storage, "stat")
            if error.status_code in (401, 403):
                # A HEAD answer has no body: one byte's GET brings the store's reason (SignatureDoesNotMatch,
                # InvalidAccessKeyId, AccessDenied...), which tells a wrong secret from a missing permission.
                try:
                    async with asyncio.timeout(self._timeout):
                        await obstore.get_range_async(store, key, start=0, end=1)
                except Exception as detail:
                    reason = _error(url, detail, storage, "stat")
                    if reason.status_code == error.status_code:
                        error = reason
            raise error from None
        header = {"Content-Length": str(meta["size"])}
        if meta.get("e_tag"):
            header["ETag"] = str(meta["e_tag"])
        if meta.get("last_modified") is not None:
            header["Last-Modified"] = meta["last_modified"].strftime("%a, %d %b %Y %H:%M:%S GMT")
        return StatResult(int(meta["size"]), header)

    async def download_piece(
        self,
        url: str,
        request_header: Mapping[str, str],
        options: SourceOptions,
        *,
        fd: int,
        offset: int,
        length: int,
        buffer: bytearray,
        progress: Callable[[int], None] | None = None,
        digest: PieceDigest | None = None,
    ) -> int:
        import obstore

        store, _scheme, key, storage = await self._prepare(url, options)
        writer = PieceWriter(
            url, self._executor, fd=fd, offset=offset, length=length, buffer=buffer, progress=progress, digest=digest
        )
        try:
            async with asyncio.timeout(self._timeout):
                result = await obstore.get_async(store, key, options={"range": (offset, offset + length)})
                async for chunk in result.stream(min_chunk_size=_CHUNK):
                    await writer.add(chunk)
        except BackendError:
            raise
        except Exception as exc:
            raise _error(url, exc, storage, f"bytes {offset}-{offset + length - 1} of") from None
        return await writer.finish()

    async def list_entries(self, url: str, request_header: Mapping[str, str], options: SourceOptions) -> list[Entry]:
        import obstore

        store, scheme, key, storage = await self._prepare(url, options)
        _, bucket, _ = split_url(url)
        prefix = key if not key or key.endswith("/") else f"{key}/"
        entries: list[Entry] = []
        try:
            async with asyncio.timeout(self._timeout):
                async for batch in obstore.list(store, prefix or None, chunk_size=1000):
                    for meta in batch:
                        path = str(meta["path"])
                        if path.endswith("/"):
                            continue  # a "directory marker" object some tools create
                        entries.append(Entry(f"{scheme}://{bucket}/{quote(path)}", int(meta["size"]), False))
                    if len(entries) > MAX_ENTRIES:
                        raise BackendError(f"{url}: more than {MAX_ENTRIES} objects under the prefix")
        except BackendError:
            raise
        except Exception as exc:
            raise _error(url, exc, storage, "listing of") from None
        return entries


def _secrets(storage: common_pb2.ObjectStorage) -> list[str]:
    return [
        s
        for s in (storage.access_key_secret, storage.session_token, storage.security_token, storage.access_key_id)
        if len(s) >= 4
    ]


def _scrub(exc: BaseException, storage: common_pb2.ObjectStorage) -> str:
    """Return the first line of an error with every credential value masked."""
    text = (str(exc) or type(exc).__name__).strip().splitlines()[0][:400]
    for secret in _secrets(storage):
        text = text.replace(secret, MASK)
    return text


def _error(url: str, exc: BaseException, storage: common_pb2.ObjectStorage, what: str) -> BackendError:
    """Turn an obstore error into a BackendError a user can act on, without credentials in it."""
    from obstore import exceptions as obx

    if isinstance(exc, TimeoutError):
        return BackendError(f"{what} {url} timed out")
    text = str(exc)
    match = _STATUS.search(text)
    status = int(match.group(1)) if match else None
    server = " ".join(f"{name}: {value.strip()}" for name, value in _XML_FIELD.findall(text))
    for secret in _secrets(storage):
        server = server.replace(secret, MASK)
    detail = f" ({server})" if server else ""
    if isinstance(exc, obx.NotFoundError | FileNotFoundError) or status == 404:
        return BackendError(f"{what} {url} failed: no such object or bucket (HTTP 404){detail}", status_code=404)
    if isinstance(exc, obx.UnauthenticatedError) or status == 401:
        return BackendError(
            f"{what} {url} failed: the store did not accept the credentials (HTTP 401){detail}; check "
            "--storage-access-key-id / --storage-access-key-secret",
            status_code=401,
        )
    if isinstance(exc, obx.PermissionDeniedError) or status == 403:
        return BackendError(
            f"{what} {url} failed: access denied (HTTP 403){detail}; check the credentials "
            "(--storage-access-key-id / --storage-access-key-secret) and the bucket's policy",
            status_code=403,
        )
    return BackendError(f"{what} {url} failed: {_scrub(exc, storage)}", status_code=status)
