"""dfget's command line: the argument types (checked before grpc is imported) and the parser."""

from __future__ import annotations

import argparse
import os
import re

from dragonfly.cli import argtypes
from dragonfly.cli.arguments import add_log_level, terminal_formatter

DEFAULT_ENDPOINT = "/var/run/dragonfly/dfdaemon.sock"


DEFAULT_PRIORITY = 6

_PRIORITY = re.compile(r"^(?:LEVEL)?([0-6])$", re.IGNORECASE)


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
        formatter_class=terminal_formatter,
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
        help="fail rather than copy when the output cannot be a hard link to the daemon's cache (by default the "
        "daemon links when it can and copies otherwise)",
    )
    parser.add_argument(
        "--copy",
        action="store_true",
        help="write the output as a copy of the daemon's cache, not a hard link to it (a hard-linked output is "
        "read-only; copy a file you will edit in place)",
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


def merge_range(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Check a ``Range`` given with -H and fold ``--range`` into the headers, where the daemon reads it."""
    ranges = [value for key, value in args.header if key.lower() == "range"]
    if len(ranges) > 1 or (ranges and args.range):
        parser.error("give the range once: either --range or one -H 'Range: ...'")
    if ranges:
        # Only here: the parser's module (a dataclass) is a cost the usual download without a range does not pay.
        from dragonfly.common.byte_range import InvalidRange, parse_range_header
    for value in ranges:
        try:
            parse_range_header(value)
        except InvalidRange as exc:
            parser.error(str(exc))
    if args.range:
        args.header.append(("Range", args.range))
