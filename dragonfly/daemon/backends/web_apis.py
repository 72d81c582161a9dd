"""Sources reached through a documented HTTP API: HDFS (WebHDFS), Hugging Face and ModelScope repositories
(docs/backends.md#hdfs and #model-hubs).

Each translates its URL into requests to the service's HTTP API and sends them through the daemon's HTTP backend,
so they get its TLS verification, SSRF guard, redirect handling (credentials dropped when a redirect leaves the
service, as Hugging Face's CDN redirects do), retries and native piece writes. Tokens travel in the request
(``Download.hdfs`` / ``hugging_face`` / ``model_scope``); errors show the user's URL, never the API URL that
carries a token.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote, unquote, urlencode, urlsplit

from dragonfly.common.redact import MASK
from dragonfly.daemon.backends.base import Entry, SourceOptions, StatResult
from dragonfly.daemon.backends.http import HTTPBackend
from dragonfly.daemon.backends.piece_chunks import PieceDigest
from dragonfly.daemon.errors import BackendError

#: WebHDFS's default NameNode HTTP port (Hadoop 3).
WEBHDFS_PORT = 9870
HUGGING_FACE_BASE_URL = "https://huggingface.co"
HUGGING_FACE_REVISION = "main"
MODEL_SCOPE_BASE_URL = "https://modelscope.cn"
MODEL_SCOPE_REVISION = "master"
MAX_ENTRIES = 100_000
_JSON_LIMIT = 64 * 1024 * 1024
# A listing that keeps sending "next" links (empty pages, a loop) ends here.
_MAX_PAGES = 10_000
_NEXT_LINK = re.compile(r'<([^>]+)>\s*;\s*rel="?next"?')


def _rewrap(exc: BackendError, api_url: str, url: str, secrets: list[str]) -> BackendError:
    """Return ``exc`` with the API URL replaced by the user's and the tokens masked."""
    message = exc.message.replace(api_url, url)
    for secret in secrets:
        if secret:
            message = message.replace(secret, MASK)
            message = message.replace(quote(secret, safe=""), MASK)
    return BackendError(message, status_code=exc.status_code, header=exc.header)


class _APISource:
    """What the API-backed sources share: the HTTP backend, and errors rewritten for the user."""

    def __init__(self, http: HTTPBackend) -> None:
        self._http = http

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def _json(
        self, url: str, api_url: str, header: Mapping[str, str], options: SourceOptions, secrets: list[str]
    ) -> tuple[Any, dict[str, str]]:
        try:
            body, response_header = await self._http.fetch_body(api_url, header, options.origin, limit=_JSON_LIMIT)
        except BackendError as exc:
            raise _rewrap(exc, api_url, url, secrets) from None
        try:
            return json.loads(body), response_header
        except ValueError:
            raise BackendError(f"{url}: the service answered something that is not JSON") from None


# ---------------------------------------------------------------------------------------------------- HDFS


class WebHDFSBackend(_APISource):
    """``hdfs://namenode[:port]/path`` through WebHDFS (``/webhdfs/v1``) on the NameNode's HTTP port."""

    @staticmethod
    def _api(url: str, op: str, options: SourceOptions, **params: int) -> str:
        parts = urlsplit(url)
        if not parts.hostname:
            raise BackendError(f"{url}: expected hdfs://namenode[:port]/path")
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        query: dict[str, Any] = {"op": op, **params}
        token = options.hdfs.delegation_token if options.hdfs is not None else ""
        if token:
            query["delegation"] = token
        path = quote(unquote(parts.path or "/"))
        return f"http://{host}:{parts.port or WEBHDFS_PORT}/webhdfs/v1{path}?{urlencode(query)}"

    @staticmethod
    def _secrets(options: SourceOptions) -> list[str]:
        return [options.hdfs.delegation_token] if options.hdfs is not None and options.hdfs.delegation_token else []

    async def _status(self, url: str, header: Mapping[str, str], options: SourceOptions) -> dict[str, Any]:
        api = self._api(url, "GETFILESTATUS", options)
        answer, _ = await self._json(url, api, header, options, self._secrets(options))
        status = answer.get("FileStatus") if isinstance(answer, dict) else None
        if not isinstance(status, dict):
            raise BackendError(f"{url}: WebHDFS answered GETFILESTATUS without a FileStatus")
        return status

    async def stat(self, url: str, request_header: Mapping[str, str], options: SourceOptions) -> StatResult:
        status = await self._status(url, request_header, options)
        if status.get("type") != "FILE":
            raise BackendError(f"{url}: is a directory (download it with -r)")
        length = int(status.get("length", -1))
        if length < 0:
            raise BackendError(f"{url}: WebHDFS announced no length")
        return StatResult(length, {"Content-Length": str(length)})

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
        # OPEN answers 200 with exactly the bytes asked for (offset/length are query parameters, not a Range);
        # the NameNode redirects to a DataNode that holds them.
        api = self._api(url, "OPEN", options, offset=offset, length=length)
        try:
            async with self._http.open_stream(api, request_header, options.origin) as reader:
                return await self._http.read_stream_piece(
                    api, reader, fd=fd, offset=offset, length=length, buffer=buffer, progress=progress, digest=digest
                )
        except BackendError as exc:
            raise _rewrap(exc, api, url, self._secrets(options)) from None

    async def list_entries(self, url: str, request_header: Mapping[str, str], options: SourceOptions) -> list[Entry]:
        parts = urlsplit(url)
        base = f"hdfs://{parts.netloc}"
        pending = [unquote(parts.path or "/").rstrip("/") or ""]
        entries: list[Entry] = []
        while pending:
            directory = pending.pop()
            listing_url = f"{base}{quote(directory or '/')}"
            api = self._api(listing_url, "LISTSTATUS", options)
            answer, _ = await self._json(listing_url, api, request_header, options, self._secrets(options))
            try:
                statuses = answer["FileStatuses"]["FileStatus"]
            except (KeyError, TypeError):
                raise BackendError(f"{listing_url}: WebHDFS answered LISTSTATUS without FileStatuses") from None
            for status in statuses:
                name = str(status.get("pathSuffix", ""))
                if not name or "/" in name or name in (".", ".."):
                    continue
                child = f"{directory}/{name}"
                if status.get("type") == "DIRECTORY":
                    entries.append(Entry(f"{base}{quote(child)}/", 0, True))
                    pending.append(child)
                else:
                    entries.append(Entry(f"{base}{quote(child)}", int(status.get("length", 0)), False))
            if len(entries) > MAX_ENTRIES:
                raise BackendError(f"{url}: more than {MAX_ENTRIES} entries")
        return entries


# ---------------------------------------------------------------------------------------------------- model hubs


class _Repository:
    """A hub URL: ``scheme://[repo_type/]owner/repo[/path]``."""

    __slots__ = ("explicit", "kind", "owner", "path", "repo", "scheme")

    def __init__(self, url: str, kinds: tuple[str, ...]) -> None:
        parts = urlsplit(url)
        self.scheme = parts.scheme.lower()
        segments = [unquote(s) for s in [parts.netloc, *parts.path.split("/")[1:]]]
        self.kind = kinds[0]
        # Entries of a listing are named the way the URL named the repository (with or without its type).
        self.explicit = bool(segments) and segments[0] in kinds
        if self.explicit:
            self.kind = segments.pop(0)
        if len(segments) < 2 or not segments[0] or not segments[1]:
            raise BackendError(f"{url}: expected {self.scheme}://[{'|'.join(kinds)}/]owner/repo[/path]")
        if any(s in (".", "..") for s in segments):
            raise BackendError(f"{url}: . and .. are not allowed in a repository path")
        self.owner, self.repo = segments[0], segments[1]
        self.path = "/".join(segments[2:])

    def url_of(self, path: str, kinds: tuple[str, ...]) -> str:
        prefix = f"{self.kind}/" if self.explicit or self.kind != kinds[0] else ""
        return f"{self.scheme}://{prefix}{quote(self.owner)}/{quote(self.repo)}/{quote(path)}"


class _HubBackend(_APISource):
    kinds: tuple[str, ...] = ()
    default_base_url = ""
    default_revision = ""

    def _settings(self, options: SourceOptions) -> tuple[str, str, str]:
        """Return (base URL, revision, token) of a request."""
        raise NotImplementedError

    def _file_url(self, repo: _Repository, base: str, revision: str) -> str:
        raise NotImplementedError

    def _header(self, request_header: Mapping[str, str], token: str) -> dict[str, str]:
        header = dict(request_header)
        if token:
            header["Authorization"] = f"Bearer {token}"
        return header

    def _target(self, url: str, options: SourceOptions) -> tuple[str, _Repository, str]:
        base, revision, _token = self._settings(options)
        repo = _Repository(url, self.kinds)
        if not repo.path or repo.path.endswith("/"):
            raise BackendError(f"{url}: names a repository or directory, not a file (download it with -r)")
        return self._file_url(repo, base, revision), repo, base

    async def stat(self, url: str, request_header: Mapping[str, str], options: SourceOptions) -> StatResult:
        api, _repo, _base = self._target(url, options)
        token = self._settings(options)[2]
        try:
            result = await self._http.stat(api, self._header(request_header, token), options.origin)
        except BackendError as exc:
            raise _rewrap(exc, api, url, [token]) from None
        if not result.supports_range:
            raise BackendError(f"{url}: the hub ignores Range requests")
        return StatResult(result.content_length, result.header)

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
        api, _repo, _base = self._target(url, options)
        token = self._settings(options)[2]
        try:
            return await self._http.download_piece(
                api,
                self._header(request_header, token),
                fd=fd,
                offset=offset,
                length=length,
                buffer=buffer,
                progress=progress,
                options=options.origin,
                digest=digest,
            )
        except BackendError as exc:
            raise _rewrap(exc, api, url, [token]) from None


class HuggingFaceBackend(_HubBackend):
    """``hf://[models|datasets|spaces/]owner/repo/path`` at a revision (``--hf-revision``, default main)."""

    kinds = ("models", "datasets", "spaces")

    def _settings(self, options: SourceOptions) -> tuple[str, str, str]:
        hf = options.hugging_face
        base = (hf.base_url if hf is not None and hf.base_url else HUGGING_FACE_BASE_URL).rstrip("/")
        revision = hf.revision if hf is not None and hf.revision else HUGGING_FACE_REVISION
        return base, revision, hf.token if hf is not None else ""

    def _file_url(self, repo: _Repository, base: str, revision: str) -> str:
        # huggingface_hub's hf_hub_url: {endpoint}/[datasets/|spaces/]{repo_id}/resolve/{revision}/{filename}
        prefix = "" if repo.kind == "models" else f"{repo.kind}/"
        return (
            f"{base}/{prefix}{quote(repo.owner)}/{quote(repo.repo)}/resolve/{quote(revision, safe='')}/"
            f"{quote(repo.path)}"
        )

    async def list_entries(self, url: str, request_header: Mapping[str, str], options: SourceOptions) -> list[Entry]:
        base, revision, token = self._settings(options)
        repo = _Repository(url, self.kinds)
        root = repo.path.strip("/")
        # The Hub's tree API, recursive, paginated with Link: <...>; rel="next".
        api: str | None = (
            f"{base}/api/{repo.kind}/{quote(repo.owner)}/{quote(repo.repo)}/tree/{quote(revision, safe='')}"
            + (f"/{quote(root)}" if root else "")
            + "?recursive=true"
        )
        entries: list[Entry] = []
        header = self._header(request_header, token)
        pages = 0
        while api is not None:
            pages += 1
            if pages > _MAX_PAGES:
                raise BackendError(f"{url}: the Hub's listing goes on for more than {_MAX_PAGES} pages")
            answer, response_header = await self._json(url, api, header, options, [token])
            if not isinstance(answer, list):
                raise BackendError(f"{url}: the Hub's tree API did not answer a list")
            for item in answer:
                path = str(item.get("path", ""))
                if item.get("type") == "directory":
                    entries.append(Entry(repo.url_of(path, self.kinds) + "/", 0, True))
                elif item.get("type") == "file":
                    entries.append(Entry(repo.url_of(path, self.kinds), int(item.get("size", 0)), False))
            if len(entries) > MAX_ENTRIES:
                raise BackendError(f"{url}: more than {MAX_ENTRIES} entries")
            link = _NEXT_LINK.search(response_header.get("Link", response_header.get("link", "")))
            api = link.group(1) if link else None
            if api is not None and urlsplit(api).netloc != urlsplit(base).netloc:
                raise BackendError(f"{url}: the Hub's next page is on another host")
        return entries


class ModelScopeBackend(_HubBackend):
    """``modelscope://[models|datasets/]owner/repo/path`` at a revision (``--ms-revision``, default master)."""

    kinds = ("models", "datasets")

    def _settings(self, options: SourceOptions) -> tuple[str, str, str]:
        ms = options.model_scope
        base = (ms.base_url if ms is not None and ms.base_url else MODEL_SCOPE_BASE_URL).rstrip("/")
        revision = ms.revision if ms is not None and ms.revision else MODEL_SCOPE_REVISION
        return base, revision, ms.token if ms is not None else ""

    def _file_url(self, repo: _Repository, base: str, revision: str) -> str:
        # ModelScope's file API: /api/v1/{models|datasets}/{owner}/{repo}/repo?Revision=...&FilePath=...
        query = urlencode({"Revision": revision, "FilePath": repo.path})
        return f"{base}/api/v1/{repo.kind}/{quote(repo.owner)}/{quote(repo.repo)}/repo?{query}"

    async def list_entries(self, url: str, request_header: Mapping[str, str], options: SourceOptions) -> list[Entry]:
        base, revision, token = self._settings(options)
        repo = _Repository(url, self.kinds)
        if repo.kind != "models":
            raise BackendError(f"{url}: listing is available for ModelScope models only")
        query = urlencode({"Revision": revision, "Recursive": "true", "Root": repo.path.strip("/")})
        api = f"{base}/api/v1/models/{quote(repo.owner)}/{quote(repo.repo)}/repo/files?{query}"
        answer, _ = await self._json(url, api, self._header(request_header, token), options, [token])
        try:
            files = answer["Data"]["Files"]
        except (KeyError, TypeError):
            message = answer.get("Message") if isinstance(answer, dict) else None
            detail = message or "no Data.Files"
            raise BackendError(f"{url}: ModelScope did not list the repository ({detail})") from None
        entries: list[Entry] = []
        for item in files:
            path = str(item.get("Path", ""))
            if item.get("Type") == "tree":
                entries.append(Entry(repo.url_of(path, self.kinds) + "/", 0, True))
            else:
                entries.append(Entry(repo.url_of(path, self.kinds), int(item.get("Size", 0)), False))
        if len(entries) > MAX_ENTRIES:
            raise BackendError(f"{url}: more than {MAX_ENTRIES} entries")
        return entries
