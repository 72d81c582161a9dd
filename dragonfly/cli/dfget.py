"""dfget: download one file through the local dfdaemon (``dfget URL -O PATH``).

dfget is a thin client: it checks its arguments, asks the daemon's ``DfdaemonDownload.DownloadTask`` over the unix
socket, draws progress from the per-piece messages and reports where the bytes came from. The daemon fetches,
verifies and writes the output file. Start-up stays light: arguments are parsed and checked before grpc and the
protocol stubs are imported, so a bad command line or a missing daemon answers at once.
"""

from __future__ import annotations

import argparse
import errno
import os
import re
import stat
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

import dragonfly
from dragonfly.cli import argtypes
from dragonfly.cli.arguments import add_log_level, parse_args
from dragonfly.common.grpc_metadata import INSECURE_ORIGIN_METADATA

# gRPC's default HTTP/2 :authority for a unix socket is the percent-encoded socket path, which is not a valid
# authority: Dragonfly's Rust dfdaemon (hyper/h2) rejects it ("malformed authority") and resets the stream.
LOCAL_API_CHANNEL_OPTIONS = (("grpc.default_authority", "localhost"),)

DEFAULT_ENDPOINT = "/var/run/dragonfly/dfdaemon.sock"
DEFAULT_TIMEOUT = 2 * 3600.0
DEFAULT_PRIORITY = 6
EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

_PRIORITY = re.compile(r"^(?:LEVEL)?([0-6])$", re.IGNORECASE)
# Origin headers are shown without --log-level debug while they fit in a few short lines.
_SHORT_HEADER_LINES = 10
_SHORT_HEADER_CHARS = 600
_START_HINT = (
    "start it with `dfdaemon --config /etc/dragonfly/dfdaemon.yaml` (or `dragonfly up` for a local cluster), "
    "or point -e/--endpoint at its socket"
)


class DownloadFailed(Exception):
    """The download could not be started or did not complete; the message is shown to the user."""


def _url(text: str) -> str:
    from urllib.parse import urlsplit

    from dragonfly.common.schemes import PATH_SCHEMES, SOURCE_SCHEMES, describe_schemes

    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in SOURCE_SCHEMES or "://" not in text:
        raise argparse.ArgumentTypeError(f"{text!r}: unsupported URL; the supported schemes are {describe_schemes()}")
    if scheme in PATH_SCHEMES:
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise argparse.ArgumentTypeError(f"{text!r}: expected file:///absolute/path")
    elif not parts.hostname:
        raise argparse.ArgumentTypeError(f"{text!r}: the URL has no host")
    return text


def _digest(text: str) -> str:
    from dragonfly.common.digest import parse_digest
    from dragonfly.common.errors import InvalidDigest

    # Hex digits are accepted in either case on the command line; the daemon compares lower-case.
    algorithm, sep, encoded = text.partition(":")
    try:
        return str(parse_digest(f"{algorithm.lower()}{sep}{encoded.lower()}"))
    except InvalidDigest as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _header(text: str) -> tuple[str, str]:
    key, sep, value = text.partition(":")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: expected 'Key: Value'")
    return key.strip(), value.strip()


def _range(text: str) -> str:
    """Return ``--range`` as a Range header value; FIRST-LAST, FIRST-, -SUFFIX, with or without ``bytes=``."""
    from dragonfly.common.byte_range import InvalidRange, parse_range_header

    value = text.strip()
    if not value.lower().startswith("bytes"):
        value = f"bytes={value}"
    try:
        return str(parse_range_header(value))
    except InvalidRange as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _priority(text: str) -> int:
    match = _PRIORITY.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r}: expected 0..6 or LEVEL0..LEVEL6")
    return int(match.group(1))


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive integer")
    return value


def _include(text: str) -> str:
    """Check an --include-files entry: a relative path (glob allowed) without '.', '..' or a leading '/'."""
    parts = text.split("/")
    if not text or text.startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a relative path such as 'weights/*.bin'")
    return text


def _ca_cert(path: str) -> tuple[bytes, ...]:
    """Read a PEM bundle into DER certificates (``Download.certificate_chain``)."""
    import ssl

    try:
        with open(path, encoding="ascii") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise argparse.ArgumentTypeError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    blocks = re.findall(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", text, re.S)
    if not blocks:
        raise argparse.ArgumentTypeError(f"{path} holds no PEM certificate")
    try:
        return tuple(ssl.PEM_cert_to_DER_cert(block) for block in blocks)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{path}: {exc}") from None


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser (flags follow Dragonfly's dfget for http/https)."""
    parser = argparse.ArgumentParser(
        prog="dfget",
        description="Download a file through the local dfdaemon (P2P, falling back to the origin).",
        epilog="Exit status: 0 when the file is complete and verified, 1 when the download failed, "
        "2 for a malformed command line, 130 when interrupted.",
    )
    env = os.environ.get
    parser.add_argument(
        "url",
        nargs="?",
        type=_url,
        help="URL to download: http(s)://, file:///path read by the daemons, s3|oss|obs|cos|gs|abs://bucket/key",
    )
    parser.add_argument(
        "-O",
        "--output",
        help="output file path (its directory must exist); '-', a device or a FIFO is written by streaming",
    )
    parser.add_argument(
        "--digest",
        type=_digest,
        help="verify the whole file: sha256:<hex>, sha512:<hex>, blake3:<hex>, crc32:<n> or crc32c:<n>",
    )
    parser.add_argument("--tag", default="", help="task tag (part of the task id)")
    parser.add_argument("--application", default="", help="caller application (part of the task id)")
    parser.add_argument(
        "-H", "--header", action="append", type=_header, default=[], help="origin request header 'Key: Value'"
    )
    parser.add_argument(
        "--range",
        type=_range,
        help="download only these bytes: FIRST-LAST (inclusive, from 0), FIRST- or -SUFFIX; same as "
        "-H 'Range: bytes=FIRST-LAST'",
    )
    parser.add_argument(
        "--filtered-query-param",
        action="append",
        default=None,
        help="query parameter left out of the task id (repeatable; default: Dragonfly's list of signing params)",
    )
    parser.add_argument(
        "--piece-length",
        type=argtypes.piece_length,
        default=env("DFGET_PIECE_LENGTH"),
        help="piece length, 4MiB..64MiB (default: chosen from the content length)",
    )
    parser.add_argument(
        "--timeout", type=argtypes.timeout, default=env("DFGET_TIMEOUT"), help="give up after this long (default 2h)"
    )
    parser.add_argument(
        "-p",
        "--priority",
        type=_priority,
        default=env("DFGET_PRIORITY", str(DEFAULT_PRIORITY)),
        help="scheduling priority 0..6 (default 6)",
    )
    parser.add_argument("--disable-back-to-source", action="store_true", help="fail rather than fetch from the origin")
    parser.add_argument(
        "--ca-cert",
        type=_ca_cert,
        default=(),
        metavar="FILE",
        help="PEM bundle of CAs trusted for an https origin, besides the system's and the daemon's backend.caCert",
    )
    parser.add_argument(
        "--insecure-skip-verify",
        action="store_true",
        help="do not verify the https origin's certificate (whoever intercepts the connection chooses the bytes)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing regular output file")
    parser.add_argument(
        "--force-hard-link",
        action="store_true",
        help="hard-link the output to the daemon's cache instead of copying it (edits then change the cache copy, "
        "which is detected and downloaded again)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument(
        "-e", "--endpoint", default=DEFAULT_ENDPOINT, help=f"dfdaemon unix socket (default {DEFAULT_ENDPOINT})"
    )
    storage = parser.add_argument_group("object storage (s3, oss, obs, cos, gs, abs URLs)")
    storage.add_argument("--storage-region", help="region of the bucket (S3-compatible stores)")
    storage.add_argument("--storage-endpoint", help="endpoint of the store, e.g. https://minio.example:9000")
    storage.add_argument("--storage-access-key-id", help="access key id (Azure: the account name)")
    storage.add_argument(
        "--storage-access-key-secret",
        default=env("DFGET_STORAGE_ACCESS_KEY_SECRET"),
        help="secret access key (Azure: the account key); also from DFGET_STORAGE_ACCESS_KEY_SECRET, which other "
        "users cannot read in the process list",
    )
    storage.add_argument("--storage-session-token", help="session token of temporary credentials")
    storage.add_argument("--storage-security-token", help="security token (OSS, OBS STS credentials)")
    storage.add_argument("--storage-credential-path", help="GCS service account file on the daemon's host")
    storage.add_argument("--storage-predefined-acl", help="predefined ACL (accepted for Dragonfly compatibility)")
    storage.add_argument(
        "--storage-insecure-skip-verify", action="store_true", help="do not verify the store's TLS certificate"
    )
    directory = parser.add_argument_group("directories (-r: object storage prefixes, hdfs, file, model hubs)")
    directory.add_argument(
        "-r",
        "--recursive",
        action="store_true",
        help="download every file under the URL into the existing directory -O; each file is its own task",
    )
    directory.add_argument(
        "-I",
        "--include-files",
        action="append",
        type=_include,
        default=[],
        help="with -r, only files whose path relative to the URL matches this glob, or lies under this directory "
        "(repeatable)",
    )
    directory.add_argument(
        "--max-files", type=_positive, default=100, help="with -r, refuse a directory with more files (default 100)"
    )
    directory.add_argument(
        "--max-concurrent-requests",
        type=_positive,
        default=5,
        help="with -r, files downloaded at once (default 5)",
    )
    hdfs = parser.add_argument_group("HDFS (hdfs://namenode:port/path, through WebHDFS)")
    hdfs.add_argument(
        "--hdfs-delegation-token",
        default=env("DFGET_HDFS_DELEGATION_TOKEN"),
        help="delegation token (also from DFGET_HDFS_DELEGATION_TOKEN)",
    )
    hub = parser.add_argument_group("model hubs (hf://[datasets/]owner/repo/path, modelscope://owner/repo/path)")
    hub.add_argument("--hf-revision", default="main", help="revision: branch, tag or commit (default main)")
    hub.add_argument("--hf-token", default=env("HF_TOKEN"), help="Hugging Face access token (also from HF_TOKEN)")
    hub.add_argument("--hf-base-url", help="Hugging Face endpoint (default https://huggingface.co)")
    hub.add_argument("--ms-revision", default="master", help="ModelScope revision (default master)")
    hub.add_argument(
        "--ms-token", default=env("MODELSCOPE_API_TOKEN"), help="ModelScope token (also from MODELSCOPE_API_TOKEN)"
    )
    hub.add_argument("--ms-base-url", help="ModelScope endpoint (default https://modelscope.cn)")
    add_log_level(parser)
    parser.add_argument("-V", "--version", action="store_true", help="print the version and exit")
    return parser


def object_storage_message(args: argparse.Namespace) -> Any:
    """Return the ``common.v2.ObjectStorage`` of the --storage-* flags, or None when none is given."""
    fields = {
        "region": args.storage_region,
        "endpoint": args.storage_endpoint,
        "access_key_id": args.storage_access_key_id,
        "access_key_secret": args.storage_access_key_secret,
        "session_token": args.storage_session_token,
        "security_token": args.storage_security_token,
        "credential_path": args.storage_credential_path,
        "predefined_acl": args.storage_predefined_acl,
    }
    given = {key: value for key, value in fields.items() if value}
    if not given and not args.storage_insecure_skip_verify:
        return None
    from dragonfly_api import common_pb2

    return common_pb2.ObjectStorage(insecure_skip_verify=args.storage_insecure_skip_verify, **given)


def add_source_settings(download: Any, args: argparse.Namespace) -> None:
    """Put the HDFS and hub flags into ``download`` for the URL's scheme (the revision is part of the task id)."""
    from dragonfly_api import common_pb2

    scheme = download.url.partition("://")[0].lower()
    if scheme == "hdfs" and args.hdfs_delegation_token:
        download.hdfs.CopyFrom(common_pb2.HDFS(delegation_token=args.hdfs_delegation_token))
    elif scheme == "hf":
        download.hugging_face.CopyFrom(
            common_pb2.HuggingFace(
                token=args.hf_token or "", revision=args.hf_revision, base_url=args.hf_base_url or ""
            )
        )
    elif scheme == "modelscope":
        download.model_scope.CopyFrom(
            common_pb2.ModelScope(token=args.ms_token or "", revision=args.ms_revision, base_url=args.ms_base_url or "")
        )


def describe_download(download: Any) -> str:
    """Return a Download message as debug output shows it: credentials masked."""
    from dragonfly_api import common_pb2

    from dragonfly.common.redact import MASK, redact_headers, redact_url

    shown = common_pb2.Download()
    shown.CopyFrom(download)
    shown.url = redact_url(shown.url)
    headers = redact_headers(dict(shown.request_header))
    shown.request_header.clear()
    shown.request_header.update(headers)
    for name in ("object_storage", "hdfs", "hugging_face", "model_scope"):
        if shown.HasField(name):
            message = getattr(shown, name)
            for secret in ("access_key_secret", "session_token", "security_token", "delegation_token", "token"):
                if secret in message.DESCRIPTOR.fields_by_name and getattr(message, secret):
                    setattr(message, secret, MASK)
    return str(shown)


def _fail(message: str) -> NoReturn:
    raise DownloadFailed(message)


def check_output(path: str, *, overwrite: bool) -> str:
    """Return the absolute output path, or raise DownloadFailed saying why it cannot be written."""
    output = os.path.abspath(os.path.expanduser(path))
    if path.endswith(os.sep) or os.path.isdir(output):
        _fail(f"output path {output} is a directory; give a file name")
    parent = os.path.dirname(output)
    if not os.path.isdir(parent):
        _fail(f"output directory {parent} does not exist")
    if os.path.lexists(output) and not overwrite:
        _fail(f"output file {output} already exists; pass --overwrite to replace it")
    # access(2) also reports EROFS, so a read-only mount is caught even for root.
    if not os.access(parent, os.W_OK | os.X_OK):
        _fail(f"output directory {parent} is not writable")
    if os.path.lexists(output) and not os.access(output, os.W_OK):
        _fail(f"output file {output} is not writable")
    return output


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return (
        f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
        if seconds >= 3600
        else (f"{seconds // 60:02d}:{seconds % 60:02d}")
    )


class ProgressBar:
    """A one-line progress bar on stderr: elapsed, bar, percent, rate, ETA (redrawn at most 10 times a second)."""

    WIDTH = 30

    def __init__(self, label: str, started: float) -> None:
        self.label = label
        # The same start as the summary line's, so both show the same rate at the end.
        self.started = started
        self._drawn = 0.0

    def update(self, done: int, total: int, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._drawn < 0.1:
            return
        self._drawn = now
        elapsed = now - self.started
        rate = done / elapsed if elapsed > 0 else 0.0
        fraction = done / total if total else 1.0
        filled = int(fraction * self.WIDTH)
        bar = "=" * filled + (">" if filled < self.WIDTH else "") + "-" * max(self.WIDTH - filled - 1, 0)
        eta = _clock((total - done) / rate) if rate > 0 else "--:--"
        sys.stderr.write(
            f"\r{self.label} [{_clock(elapsed)}] [{bar}] {fraction * 100:3.0f}% ({_human(rate)}/s, eta {eta}) "
        )
        sys.stderr.flush()

    def close(self) -> None:
        sys.stderr.write("\n")
        sys.stderr.flush()


class Traffic:
    """Bytes received per source, from the per-piece messages (each piece counted once)."""

    __slots__ = ("by_parent", "local", "origin", "peers", "pieces", "seed", "spans")

    def __init__(self) -> None:
        self.origin = self.seed = self.peers = self.local = 0
        self.pieces: set[int] = set()
        self.spans: list[tuple[int, int]] = []
        # Bytes per parent peer id: which peers served this download (shown with --log-level debug).
        self.by_parent: dict[str, int] = {}

    @property
    def total(self) -> int:
        return self.origin + self.seed + self.peers + self.local

    def covered(self, start: int, end: int) -> int:
        """Return how many bytes of ``[start, end)`` the received pieces hold."""
        return sum(max(0, min(e, end) - max(s, start)) for s, e in self.spans)

    def add(self, piece: Any) -> None:
        from dragonfly_api import common_pb2

        if piece.number in self.pieces:
            return
        self.pieces.add(piece.number)
        self.spans.append((piece.offset, piece.offset + piece.length))
        if piece.traffic_type == common_pb2.BACK_TO_SOURCE:
            self.origin += piece.length
        elif piece.traffic_type == common_pb2.LOCAL_PEER:
            self.local += piece.length
        elif piece.parent_id.endswith("-seed"):
            self.seed += piece.length
        else:
            self.peers += piece.length
        if piece.traffic_type == common_pb2.REMOTE_PEER:
            self.by_parent[piece.parent_id] = self.by_parent.get(piece.parent_id, 0) + piece.length


def _backend_details(error: Any) -> Any:
    """Return the ``errordetails.v2.Backend`` the daemon put as JSON in ``Status.details``, or None."""
    import json

    from dragonfly_api import errordetails_pb2
    from google.protobuf import json_format

    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            try:
                return json_format.ParseDict(json.loads(value), errordetails_pb2.Backend(), ignore_unknown_fields=True)
            except (ValueError, TypeError, json_format.ParseError):
                # Details of another kind (a google.rpc.Status from some other server) are not ours to show.
                return None
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


def _describe_rpc_error(
    error: Any, endpoint: str, timeout: float, received: bool, *, verbose: bool = False
) -> DownloadFailed:
    """Return the failure to show for a failed DownloadTask call; origin headers come as its notes."""
    import grpc

    code, details = error.code(), error.details() or ""
    # UNAVAILABLE is both gRPC's "no connection" and a status the daemon itself may answer with (origin or
    # scheduler unreachable); only a socket that no longer accepts connections means the daemon is gone.
    if code == grpc.StatusCode.UNAVAILABLE and not _daemon_listening(endpoint):
        if not received:
            return DownloadFailed(f"cannot connect to dfdaemon at {endpoint} ({details}); is it running? {_START_HINT}")
        return DownloadFailed(f"lost the connection to dfdaemon at {endpoint} during the download: {details}")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DownloadFailed(f"timed out after {timeout:g}s (--timeout): {details}")
    message = f"download failed: {details or code.name}"
    backend = _backend_details(error)
    if backend is None:
        return DownloadFailed(message)
    if backend.HasField("status_code") and f"HTTP {backend.status_code}" not in details:
        message += f" (origin answered HTTP {backend.status_code})"
    failure = DownloadFailed(message)
    for line in _origin_headers(backend.header, verbose):
        failure.add_note(line)
    return failure


def download(
    args: argparse.Namespace,
    output: str,
    began: float,
    on_progress: Callable[[int, int], None] | None = None,
) -> Traffic:
    """Run DownloadTask on the daemon; return the traffic by source once the file is complete.

    ``on_progress`` is called with the bytes received and the bytes expected after each piece.
    """
    if not os.path.exists(args.endpoint):
        _fail(f"dfdaemon is not running: no socket at {args.endpoint}; {_START_HINT}")

    import grpc
    from dragonfly_api import common_pb2, dfdaemon_pb2, dfdaemon_pb2_grpc
    from google.protobuf import duration_pb2

    from dragonfly.common.ids import DEFAULT_FILTERED_QUERY_PARAMS

    filtered = args.filtered_query_param if args.filtered_query_param is not None else DEFAULT_FILTERED_QUERY_PARAMS
    timeout = DEFAULT_TIMEOUT if args.timeout is None else float(args.timeout)
    download = common_pb2.Download(
        url=args.url,
        digest=args.digest,
        type=common_pb2.STANDARD,
        tag=args.tag,
        application=args.application,
        priority=args.priority,
        filtered_query_params=list(filtered),
        request_header=dict(args.header),
        piece_length=args.piece_length,
        output_path=output,
        timeout=duration_pb2.Duration(seconds=int(timeout), nanos=int((timeout % 1) * 1e9)),
        disable_back_to_source=args.disable_back_to_source,
        overwrite=args.overwrite,
        force_hard_link=args.force_hard_link,
        certificate_chain=list(args.ca_cert),
    )
    metadata: tuple[tuple[str, str], ...] = ()
    if args.insecure_skip_verify:
        print("dfget: warning: the origin's TLS certificate is not verified (--insecure-skip-verify)", file=sys.stderr)
        metadata = ((INSECURE_ORIGIN_METADATA, "true"),)
    storage = object_storage_message(args)
    if storage is not None:
        download.object_storage.CopyFrom(storage)
    add_source_settings(download, args)
    if args.log_level == "debug":
        print(f"dfget: DownloadTask on unix:{args.endpoint}: {describe_download(download)}", file=sys.stderr)

    show_progress = not args.no_progress and sys.stderr.isatty()
    bar = ProgressBar(os.path.basename(output), began) if show_progress else None
    traffic = Traffic()
    content_length: int | None = None
    # What the output must hold: the whole content, or the range the daemon resolved.
    expected: tuple[int, int] | None = None
    finished_locally = False
    with grpc.insecure_channel(f"unix:{args.endpoint}", options=LOCAL_API_CHANNEL_OPTIONS) as channel:
        stub = dfdaemon_pb2_grpc.DfdaemonDownloadStub(channel)  # type: ignore[no-untyped-call]
        call = stub.DownloadTask(
            dfdaemon_pb2.DownloadTaskRequest(download=download), timeout=timeout, metadata=metadata
        )
        try:
            for response in call:
                if response.HasField("download_task_started_response"):
                    started = response.download_task_started_response
                    content_length = started.content_length
                    expected = (
                        (started.range.start, started.range.start + started.range.length)
                        if started.HasField("range")
                        else (0, content_length)
                    )
                    finished_locally = started.is_finished
                    if args.log_level == "debug":
                        print(f"dfget: task {response.task_id} peer {response.peer_id}", file=sys.stderr)
                elif response.HasField("download_piece_finished_response"):
                    traffic.add(response.download_piece_finished_response.piece)
                if expected is not None:
                    if bar is not None:
                        bar.update(traffic.covered(*expected), expected[1] - expected[0])
                    if on_progress is not None:
                        on_progress(traffic.covered(*expected), expected[1] - expected[0])
        except grpc.RpcError as error:
            call.cancel()
            raise _describe_rpc_error(
                error, args.endpoint, timeout, content_length is not None, verbose=args.log_level == "debug"
            ) from None
        finally:
            if bar is not None:
                if expected is not None:
                    bar.update(traffic.covered(*expected), expected[1] - expected[0], force=True)
                bar.close()

    if content_length is None or expected is None:
        _fail("dfdaemon ended the download without starting it (no DownloadTaskStartedResponse)")
    start, end = expected
    if finished_locally and not traffic.pieces:
        # A daemon may answer a full local hit with the started message alone.
        traffic.local = content_length
        traffic.spans.append((0, content_length))
    if traffic.covered(start, end) != end - start:
        _fail(f"download incomplete: received {traffic.covered(start, end)} of {end - start} bytes")
    try:
        size = os.stat(output).st_size
    except FileNotFoundError:
        _fail(f"dfdaemon reported success but wrote no file at {output}")
    if size != end - start:
        _fail(f"output file {output} has {size} bytes, expected {end - start}")
    return traffic


def main(argv: list[str] | None = None) -> int:
    """Run dfget; see ``dfget --help``."""
    parser = build_parser()
    args = parse_args(parser, argv)
    if args.version:
        print(f"dfget {dragonfly.__version__}")
        return EXIT_OK
    if args.url is None or not args.output:
        parser.error("the URL and -O/--output are required")
    _merge_range(parser, args)
    if args.recursive:
        return main_recursive(parser, args)
    if args.include_files:
        parser.error("--include-files needs -r")

    existed = False
    output = ""
    started = time.monotonic()
    stream_to = stream_target(args.output)
    size: int | None = None
    try:
        if stream_to is not None:
            output = "standard output" if stream_to == "-" else stream_to
            traffic, size = download_and_stream(args, stream_to)
        else:
            output = check_output(args.output, overwrite=args.overwrite)
            existed = os.path.lexists(output)
            traffic = download(args, output, started)
    except DownloadFailed as exc:
        _remove_partial(output, existed)
        # The error stays the last line (scripts read it); what explains it, such as origin headers, goes first.
        for note in getattr(exc, "__notes__", ()):
            print(f"dfget: {note}", file=sys.stderr)
        print(f"dfget: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        _remove_partial(output, existed)
        print("dfget: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    elapsed = time.monotonic() - started
    if size is None:
        size = os.path.getsize(output)
    print(
        f"dfget: saved {output}: {size} bytes ({_human(size)}) in {elapsed:.2f}s "
        f"({_human(size / elapsed if elapsed > 0 else 0)}/s); from origin={traffic.origin} "
        f"seed={traffic.seed} peers={traffic.peers} local={traffic.local}",
        file=sys.stderr,
    )
    if args.log_level == "debug":
        for parent, length in sorted(traffic.by_parent.items()):
            print(f"dfget: from parent {parent}: {length} bytes", file=sys.stderr)
    return EXIT_OK


def main_recursive(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Run ``dfget -r``: every file under the URL into the directory -O."""
    from dragonfly.common.schemes import scheme_of

    if scheme_of(args.url) in ("http", "https"):
        parser.error("-r needs a directory-like URL (s3, oss, obs, cos, gs, abs, hdfs, file, hf, modelscope)")
    if any(key.lower() == "range" for key, _ in args.header):
        parser.error("-r downloads whole files: --range cannot be used with it")
    output = os.path.abspath(os.path.expanduser(args.output))
    started = time.monotonic()
    try:
        if not os.path.isdir(output):
            _fail(f"output directory {output} does not exist (-r writes into an existing directory)")
        count, size, traffic = download_directory(args, output, started)
    except DownloadFailed as exc:
        for note in getattr(exc, "__notes__", ()):
            print(f"dfget: {note}", file=sys.stderr)
        print(f"dfget: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("dfget: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    elapsed = time.monotonic() - started
    print(
        f"dfget: saved {count} files into {output}: {size} bytes ({_human(size)}) in {elapsed:.2f}s "
        f"({_human(size / elapsed if elapsed > 0 else 0)}/s); from origin={traffic.origin} "
        f"seed={traffic.seed} peers={traffic.peers} local={traffic.local}",
        file=sys.stderr,
    )
    return EXIT_OK


def directory_url(url: str) -> str:
    """Return ``url`` with a path ending in '/' (dfget -r names a directory)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    path = parts.path if parts.path.endswith("/") else parts.path + "/"
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, parts.fragment))


def relative_path(base: str, url: str) -> str:
    """Return the path of an entry's URL under the directory URL ``base``, refusing anything that leaves it."""
    from urllib.parse import unquote, urlsplit

    base_parts, parts = urlsplit(base), urlsplit(url)
    base_path, path = unquote(base_parts.path), unquote(parts.path)
    if (parts.scheme.lower(), parts.netloc) != (base_parts.scheme.lower(), base_parts.netloc) or not path.startswith(
        base_path
    ):
        _fail(f"dfdaemon listed {url}, which is not under {base}")
    relative = path[len(base_path) :].strip("/")
    if not relative or any(part in ("", ".", "..") for part in relative.split("/")) or "\0" in relative:
        _fail(f"dfdaemon listed {url}, whose path cannot be a file under the output directory")
    return relative


def included(relative: str, patterns: list[str]) -> bool:
    """Tell whether a file passes --include-files: no patterns, a matching glob, or a directory above it."""
    import fnmatch

    if not patterns:
        return True
    return any(
        fnmatch.fnmatchcase(relative, pattern) or relative.startswith(pattern.rstrip("/") + "/") for pattern in patterns
    )


def list_entries(args: argparse.Namespace, url: str) -> list[Any]:
    """Ask the daemon for the entries under ``url`` (``ListTaskEntries``)."""
    import uuid

    import grpc
    from dragonfly_api import common_pb2, dfdaemon_pb2, dfdaemon_pb2_grpc
    from google.protobuf import duration_pb2

    if not os.path.exists(args.endpoint):
        _fail(f"dfdaemon is not running: no socket at {args.endpoint}; {_START_HINT}")
    timeout = DEFAULT_TIMEOUT if args.timeout is None else float(args.timeout)
    # The settings travel as in a Download: build one and copy its fields.
    settings = common_pb2.Download(url=url)
    storage = object_storage_message(args)
    if storage is not None:
        settings.object_storage.CopyFrom(storage)
    add_source_settings(settings, args)
    request = dfdaemon_pb2.ListTaskEntriesRequest(
        task_id=str(uuid.uuid4()),
        url=url,
        request_header=dict(args.header),
        timeout=duration_pb2.Duration(seconds=int(timeout), nanos=int((timeout % 1) * 1e9)),
    )
    for name in ("object_storage", "hdfs", "hugging_face", "model_scope"):
        if settings.HasField(name):
            getattr(request, name).CopyFrom(getattr(settings, name))
    with grpc.insecure_channel(f"unix:{args.endpoint}", options=LOCAL_API_CHANNEL_OPTIONS) as channel:
        stub = dfdaemon_pb2_grpc.DfdaemonDownloadStub(channel)  # type: ignore[no-untyped-call]
        try:
            response = stub.ListTaskEntries(request, timeout=timeout)
        except grpc.RpcError as error:
            failure = _describe_rpc_error(error, args.endpoint, timeout, False, verbose=args.log_level == "debug")
            raise DownloadFailed(str(failure).replace("download failed", f"listing {url} failed", 1)) from None
    return list(response.entries)


def download_directory(args: argparse.Namespace, output: str, began: float) -> tuple[int, int, Traffic]:
    """Download every file under ``args.url`` into ``output``; return the file count, bytes and traffic.

    Each file is its own task (its own URL, hence task id); ``--max-concurrent-requests`` run at once; one
    progress bar covers the whole set. The first failure stops the rest (files already written stay).
    """
    import threading
    from concurrent.futures import ThreadPoolExecutor

    base = directory_url(args.url)
    directories: set[str] = set()
    files: list[tuple[str, str, int]] = []
    for entry in list_entries(args, base):
        relative = relative_path(base, entry.url)
        if entry.is_dir:
            directories.add(relative)
        elif included(relative, args.include_files):
            files.append((relative, entry.url, entry.content_length))
    if len(files) > args.max_files:
        _fail(f"{base} holds {len(files)} files, more than --max-files {args.max_files}")
    if not files:
        _fail(f"no files under {base}" + (" match --include-files" if args.include_files else ""))
    targets = [(relative, url, os.path.join(output, relative)) for relative, url, _ in files]
    if not args.overwrite:
        existing = [path for _, _, path in targets if os.path.lexists(path)]
        if existing:
            _fail(f"{existing[0]} exists (and {len(existing) - 1} more); use --overwrite to replace them")
    for _, _, path in targets:
        os.makedirs(os.path.dirname(path), exist_ok=True)
    if not args.include_files:
        # Empty directories too, as the source has them; with a filter, only those the chosen files need.
        for relative in directories:
            os.makedirs(os.path.join(output, relative), exist_ok=True)

    total = sum(length for _, _, length in files)
    lock = threading.Lock()
    received: dict[str, int] = {}
    show_progress = not args.no_progress and sys.stderr.isatty()
    bar = ProgressBar(f"{len(files)} files", began) if show_progress else None
    traffic = Traffic()
    failures: list[tuple[str, DownloadFailed]] = []

    def fetch(relative: str, url: str, path: str) -> None:
        if failures:
            return  # a file failed: the rest are not started

        def progress(done: int, _expected: int) -> None:
            with lock:
                received[relative] = done
                if bar is not None:
                    bar.update(sum(received.values()), total)

        file_args = argparse.Namespace(**{**vars(args), "url": url, "no_progress": True})
        try:
            result = download(file_args, path, began, progress)
        except DownloadFailed as exc:
            with lock:
                failures.append((relative, exc))
            return
        with lock:
            for source in ("origin", "seed", "peers", "local"):
                setattr(traffic, source, getattr(traffic, source) + getattr(result, source))

    try:
        with ThreadPoolExecutor(args.max_concurrent_requests, thread_name_prefix="dfget") as pool:
            for future in [pool.submit(fetch, *target) for target in targets]:
                future.result()
    finally:
        if bar is not None:
            bar.update(sum(received.values()), total, force=True)
            bar.close()
    if failures:
        relative, exc = failures[0]
        failure = DownloadFailed(f"{relative}: {exc}")
        for note in getattr(exc, "__notes__", ()):
            failure.add_note(note)
        raise failure
    return len(files), total, traffic


def _merge_range(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Check a ``Range`` given with -H and fold ``--range`` into the headers, where the daemon reads it."""
    from dragonfly.common.byte_range import InvalidRange, parse_range_header

    ranges = [value for key, value in args.header if key.lower() == "range"]
    if len(ranges) > 1 or (ranges and args.range):
        parser.error("give the range once: either --range or one -H 'Range: ...'")
    for value in ranges:
        try:
            parse_range_header(value)
        except InvalidRange as exc:
            parser.error(str(exc))
    if args.range:
        args.header.append(("Range", args.range))


def stream_target(path: str) -> str | None:
    """Return where to stream the content ('-' or the path) when the output is stdout, a device or a FIFO.

    Those are never replaced (``--overwrite`` replaces regular files only) and the daemon never opens them:
    dfget writes them itself, with the caller's own rights (docs/output-and-cache.md).
    """
    if path == "-":
        return path
    try:
        mode = os.stat(os.path.expanduser(path)).st_mode
    except OSError:
        return None
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
        return os.path.abspath(os.path.expanduser(path))
    return None


def download_and_stream(args: argparse.Namespace, target: str) -> tuple[Traffic, int]:
    """Download into a private temporary file, then copy it into ``target`` (fd 1 for '-') without replacing it.

    Return the traffic and the number of bytes written.
    """
    import tempfile  # only here: dfget's start-up stays light

    with tempfile.TemporaryDirectory(prefix="dfget-") as directory:
        temporary = os.path.join(directory, "content")
        # The temporary file is a private copy: a hard link into the cache would be pointless here.
        traffic = download(argparse.Namespace(**{**vars(args), "force_hard_link": False}), temporary, time.monotonic())
        try:
            out = 1 if target == "-" else os.open(target, os.O_WRONLY | os.O_CLOEXEC)
        except OSError as exc:
            _fail(f"cannot open {target} for writing: {exc.strerror}")
        try:
            with open(temporary, "rb") as source:
                size = os.fstat(source.fileno()).st_size
                _copy_fd(source.fileno(), out, size)
        except OSError as exc:
            _fail(f"cannot write to {'standard output' if target == '-' else target}: {exc.strerror or exc}")
        finally:
            if out != 1:
                os.close(out)
    return traffic, size


def _copy_fd(source: int, out: int, size: int) -> None:
    offset = 0
    try:
        while offset < size:
            sent = os.sendfile(out, source, offset, min(size - offset, 1 << 30))
            if sent == 0:
                break
            offset += sent
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOSYS):
            raise
        # Some outputs (e.g. a terminal on old kernels) take no sendfile: plain reads and writes.
        while offset < size:
            chunk = os.pread(source, min(size - offset, 1 << 20), offset)
            if not chunk:
                break
            view = memoryview(chunk)
            while view:
                view = view[os.write(out, view) :]
            offset += len(chunk)
    if offset != size:
        raise OSError(errno.EIO, f"the downloaded file ended after {offset} of {size} bytes")


def _remove_partial(output: str, existed: bool) -> None:
    # The daemon must not leave a file behind on failure; if one appeared anyway, it is not the user's.
    if output and not existed and os.path.lexists(output):
        os.unlink(output)


if __name__ == "__main__":
    sys.exit(main())
