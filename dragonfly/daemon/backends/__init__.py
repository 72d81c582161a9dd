"""Back-to-source backends, one per URL scheme, behind one interface (docs/backends.md).

``Backends`` is the registry the task manager asks: ``backends.get(url)`` returns the backend of the URL's scheme.
HTTP(S) keeps its own richer interface as well (streamed bodies for origins that ignore ``Range``), reachable as
``backends.http``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from dragonfly.common.schemes import SOURCE_SCHEMES, describe_schemes, scheme_of
from dragonfly.daemon.backends.base import (
    NO_OPTIONS,
    Backend,
    Entry,
    NotReadableHere,
    SourceOptions,
    StatResult,
)
from dragonfly.daemon.errors import BackendError

if TYPE_CHECKING:
    from dragonfly.daemon.backends.http import HTTPBackend
    from dragonfly.daemon.backends.piece_chunks import PieceDigest

#: Every scheme some backend of this package serves (a daemon serves those it is configured for).
SCHEMES = SOURCE_SCHEMES


class UnsupportedScheme(ValueError):
    """No backend serves the URL's scheme."""


def check_scheme(url: str, describe: Callable[[str], str] = lambda u: u) -> str:
    """Return the scheme of ``url``, or raise UnsupportedScheme naming the schemes served."""
    scheme = scheme_of(url)
    if scheme not in SCHEMES:
        raise UnsupportedScheme(f"unsupported URL {describe(url)!r}: the supported schemes are {describe_schemes()}")
    return scheme


class HTTPSource:
    """The HTTP(S) backend seen through the common interface."""

    def __init__(self, http: HTTPBackend) -> None:
        self.http = http

    async def start(self) -> None:
        await self.http.start()

    async def close(self) -> None:
        await self.http.close()

    async def stat(self, url: str, request_header: Mapping[str, str], options: SourceOptions) -> StatResult:
        result = await self.http.stat(url, request_header, options.origin)
        return StatResult(result.content_length, result.header, result.supports_range)

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
        return await self.http.download_piece(
            url,
            request_header,
            fd=fd,
            offset=offset,
            length=length,
            buffer=buffer,
            progress=progress,
            options=options.origin,
            digest=digest,
        )

    async def list_entries(self, url: str, request_header: Mapping[str, str], options: SourceOptions) -> list[Entry]:
        raise BackendError(f"{url}: an http(s) URL names one file; directory downloads need another scheme")


class Backends:
    """The backends of one daemon, by scheme."""

    def __init__(self, http: HTTPBackend, others: Mapping[str, Backend] | None = None) -> None:
        self.http = http
        source = HTTPSource(http)
        self._by_scheme: dict[str, Backend] = {"http": source, "https": source}
        self._owned: list[Backend] = []
        for scheme, backend in (others or {}).items():
            self._by_scheme[scheme] = backend
            if backend not in self._owned:
                self._owned.append(backend)

    def get(self, url: str) -> Backend:
        """Return the backend of ``url``'s scheme, or raise UnsupportedScheme."""
        backend = self._by_scheme.get(scheme_of(url))
        if backend is None:
            check_scheme(url)
            raise UnsupportedScheme(f"{scheme_of(url)}:// is not enabled on this daemon")
        return backend

    async def start(self) -> None:
        """Start the backends other than HTTP's (the daemon starts that one itself)."""
        for backend in self._owned:
            await backend.start()

    async def close(self) -> None:
        for backend in self._owned:
            await backend.close()


__all__ = [
    "NO_OPTIONS",
    "SCHEMES",
    "Backend",
    "Backends",
    "Entry",
    "HTTPSource",
    "NotReadableHere",
    "SourceOptions",
    "StatResult",
    "UnsupportedScheme",
    "check_scheme",
    "scheme_of",
]
