"""What dfget tells the user when a download fails: the exception it shows, and the daemon's errors in words."""

from __future__ import annotations

from collections.abc import Mapping

from dragonfly.cli.dfget.rpc import DEADLINE_EXCEEDED, UNAVAILABLE, UNKNOWN, RpcError

# typing is for the type checker only here: importing it costs a few ms at every dfget start (bench/RESULTS.md §3).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NoReturn

# Origin headers are shown without --log-level debug while they fit in a few short lines.
_SHORT_HEADER_LINES = 10
_SHORT_HEADER_CHARS = 600
START_HINT = (
    "start it with `dfdaemon --config /etc/dragonfly/dfdaemon.yaml` (or `dragonfly up` for a local cluster), "
    "or point -e/--endpoint at its socket"
)


class DownloadFailed(Exception):
    """The download could not be started or did not complete; the message is shown to the user."""


def fail(message: str) -> NoReturn:
    raise DownloadFailed(message)


# C0 controls, DEL and C1 controls: what a terminal may act on. Line breaks too: one message stays one line.
_CONTROLS = {code: f"\\x{code:02x}" for code in (*range(0x20), *range(0x7F, 0xA0))}


def printable(text: str) -> str:
    """Return ``text`` with its control characters escaped (``\\x1b``), for dfget's messages on the terminal.

    Error messages carry an origin's words through the daemon (its reason phrase, its response headers, listed
    URLs), and aiohttp accepts ESC and BEL in those: printed as they are, a hostile origin could retitle, clear or
    write to the clipboard of the user's terminal, or forge lines of dfget's output.
    """
    return text.translate(_CONTROLS)


def _backend_details(error: RpcError) -> Any:
    """Return the ``errordetails.v2.Backend`` the daemon put as JSON in ``Status.details``, or None."""
    value = error.trailers.get("grpc-status-details-bin")
    if value is None:
        return None
    import json

    from dragonfly_api import errordetails_pb2
    from google.protobuf import json_format

    try:
        return json_format.ParseDict(json.loads(value), errordetails_pb2.Backend(), ignore_unknown_fields=True)
    except (ValueError, TypeError, RecursionError, json_format.ParseError):
        # Details of another kind (a google.rpc.Status from some other server) are not ours to show, nor garbage
        # (JSON nested past the decoder's recursion limit raises RecursionError, not ValueError).
        return None


def _origin_headers(header: Mapping[str, str], verbose: bool) -> list[str]:
    """Return the origin's response headers as lines, or a hint when they are many and not asked for."""
    if not header:
        return []
    lines = [f"  {key}: {header[key]}" for key in sorted(header, key=str.lower)]
    if verbose or (len(lines) <= _SHORT_HEADER_LINES and sum(map(len, lines)) <= _SHORT_HEADER_CHARS):
        return ["origin response headers:", *lines]
    return [f"origin sent {len(lines)} response headers; --log-level debug shows them"]


def _daemon_listening(endpoint: str) -> bool:
    import socket

    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(1.0)
        try:
            sock.connect(endpoint)
        except OSError:
            return False
    return True


def describe_rpc_error(
    error: RpcError, endpoint: str, timeout: float, received: bool, *, verbose: bool = False
) -> DownloadFailed:
    """Return the failure to show for a failed DownloadTask call; origin headers come as its notes."""
    code, details = error.code, error.details
    # UNAVAILABLE is both gRPC's "no connection" and a status the daemon itself may answer with (origin or
    # scheduler unreachable); only a socket that no longer accepts connections means the daemon is gone. A daemon
    # killed mid-stream can also end the call with UNKNOWN ("Stream removed", connection reset).
    lost = code in (UNAVAILABLE, UNKNOWN)
    if error.connection_lost and received:
        # The connection ended, not the call: the daemon went away (or dropped it). Whether its socket still takes
        # connections says nothing here: a daemon being killed may still be listening for an instant after the
        # kernel closed this connection.
        return DownloadFailed(f"lost the connection to dfdaemon at {endpoint} during the download: {details}")
    if lost and not _daemon_listening(endpoint):
        if not received:
            return DownloadFailed(f"cannot connect to dfdaemon at {endpoint} ({details}); is it running? {START_HINT}")
        return DownloadFailed(f"lost the connection to dfdaemon at {endpoint} during the download: {details}")
    if code == DEADLINE_EXCEEDED:
        return DownloadFailed(f"timed out after {timeout:g}s (--timeout): {details}")
    message = f"download failed: {details or error.code_name}"
    backend = _backend_details(error)
    if backend is None:
        return DownloadFailed(message)
    if backend.HasField("status_code") and f"HTTP {backend.status_code}" not in details:
        message += f" (origin answered HTTP {backend.status_code})"
    failure = DownloadFailed(message)
    for line in _origin_headers(backend.header, verbose):
        failure.add_note(line)
    return failure
