"""Domain exceptions shared by every part of the system.

Leaves also inherit a stdlib base so callers may catch either (``ShortRead`` is a ``ConnectionError``).
The native extensions raise these very classes (they import this module), and so do the Python twins.
"""

from __future__ import annotations


class DragonflyError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(DragonflyError, ValueError):
    """A config file or value is invalid; the message names the file and the key."""

    def __init__(self, message: str, *, key: str | None = None, path: str | None = None) -> None:
        where = ""
        if path and key:
            where = f"{path}: {key}: "
        elif path:
            where = f"{path}: "
        elif key:
            where = f"{key}: "
        super().__init__(f"{where}{message}")
        self.key = key
        self.path = path


class InvalidDigest(DragonflyError, ValueError):
    """A digest string such as ``sha256:<hex>`` is malformed or names an unknown algorithm."""


class DigestMismatch(DragonflyError):
    """Content does not match the digest it was announced with."""

    def __init__(self, expected: str, actual: str, what: str = "content") -> None:
        super().__init__(f"{what} digest mismatch: expected {expected}, got {actual}")
        self.expected = expected
        self.actual = actual


class ShortRead(DragonflyError, ConnectionError):
    """The peer closed the connection before sending all the bytes it announced."""

    def __init__(self, expected: int, received: int) -> None:
        super().__init__(f"connection closed after {received} of {expected} bytes")
        self.expected = expected
        self.received = received


class VortexError(DragonflyError, ValueError):
    """A Vortex frame is malformed: unknown tag, bad length, truncated value, invalid text."""


class VortexRemoteError(DragonflyError):
    """The remote side answered a Vortex request with an Error frame (tag 255)."""

    def __init__(self, code: int, message: str) -> None:
        names = {0: "Unknown", 1: "InvalidArgument", 2: "NotFound", 3: "Internal"}
        super().__init__(f"remote error {names.get(code, code)}: {message}")
        self.code = code
        self.message = message


class NativeExtensionError(DragonflyError, ImportError):
    """A compiled extension is missing, stale, or of the wrong version."""


class OriginAddressRefused(DragonflyError, PermissionError):
    """An origin request on a remote party's behalf would connect to an internal address (the SSRF guard)."""

    def __init__(self, host: str, address: str, what: str) -> None:
        shown = host if host == address else f"{host} ({address})"
        super().__init__(
            f"refused to connect to {shown}: a {what} address, and this download was asked for by another host "
            "(allow it in security.allowedOriginNetworks)"
        )
        self.host = host
        self.address = address
        self.what = what
