"""``dragonfly preheat URL|IMAGE``: warm a file or an image on the cluster's seed peers (or peers) through the
manager's Open API, and show per host what is cached.

The command creates a preheat job (``POST /oapi/v1/jobs`` with a personal access token holding the ``job``
scope), polls it until it ends and prints, per cluster, every (host, URL) with ``cached`` or the reason it
failed, then who holds what now (the scheduler's StatFile/StatImage). Exit status 0 only when the job succeeded.

The target is an image when it is a manifest URL (``https://r.example/v2/team/app/manifests/1.0``) or an image
name (``r.example/team/app:1.0``; ``--plain-http`` for a registry without TLS), else a file URL (``--type``
decides when that guess is wrong).
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

from dragonfly.cli.arguments import description, parse_args

MANAGER_ENV = "DRAGONFLY_MANAGER"
TOKEN_ENV = "DRAGONFLY_TOKEN"
PASSWORD_ENV = "DRAGONFLY_REGISTRY_PASSWORD"
DEFAULT_MANAGER = "http://127.0.0.1:8080"
#: One request to the manager; the job itself is bounded by --timeout.
REQUEST_TIMEOUT = 30.0


class PreheatError(Exception):
    """The preheat could not be asked for or followed (the message says why)."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dragonfly preheat", description=description(__doc__))
    parser.add_argument("target", metavar="URL|IMAGE", help="a file URL, an image manifest URL or an image name")
    parser.add_argument("--type", choices=("file", "image"), help="what the target is (default: guessed)")
    parser.add_argument("--platform", help="os/arch[/variant] of a multi-platform image (default: the hosts' own)")
    parser.add_argument(
        "--scope",
        choices=("single_seed_peer", "all_seed_peers", "all_peers"),
        default="single_seed_peer",
        help="which hosts download (default: single_seed_peer)",
    )
    parser.add_argument("--ip", dest="ips", action="append", default=[], metavar="IP", help="only this host (repeat)")
    parser.add_argument("--count", type=int, help="this many hosts of the scope, chosen at random")
    parser.add_argument("--percentage", type=int, help="this share of the scope's hosts")
    parser.add_argument(
        "--cluster-id", dest="cluster_ids", type=int, action="append", default=[], help="target cluster (repeat)"
    )
    parser.add_argument("--tag", default="", help="task tag (as the later downloads use)")
    parser.add_argument("--application", default="", help="task application (as the later downloads use)")
    parser.add_argument("--piece-length", type=int, help="piece length in bytes (4 MiB to 64 MiB)")
    parser.add_argument("--header", action="append", default=[], metavar="K:V", help="request header (repeat)")
    parser.add_argument("--username", default="", help="registry user")
    parser.add_argument(
        "--password-env",
        default=PASSWORD_ENV,
        metavar="VAR",
        help=f"variable holding the registry password ({PASSWORD_ENV})",
    )
    parser.add_argument("--plain-http", action="store_true", help="the registry of an image name speaks http")
    parser.add_argument("--timeout", default="60m", help="how long the preheat may take (default: 60m)")
    parser.add_argument("--manager", default=os.environ.get(MANAGER_ENV, DEFAULT_MANAGER), help="manager REST URL")
    parser.add_argument(
        "--token-env", default=TOKEN_ENV, metavar="VAR", help=f"variable holding the token ({TOKEN_ENV})"
    )
    parser.add_argument("--ca-cert", help="CA certificate (PEM) of the manager's HTTPS")
    parser.add_argument("--no-wait", action="store_true", help="print the job id and return")
    parser.add_argument("--json", action="store_true", help="print the job as JSON")
    parser.add_argument("--poll-interval", type=float, default=1.0, help="seconds between polls (default: 1)")
    return parser


def build_args(options: argparse.Namespace) -> dict[str, Any]:
    """Return the job's ``args`` (Dragonfly's PreheatArgs) from the command line."""
    from dragonfly.common import oci
    from dragonfly.common.config import parse_duration

    target = options.target.strip()
    kind = options.type
    url = target
    if kind is None:
        if "://" not in target:
            kind = "image"
        else:
            try:
                oci.parse_manifest_url(target)
                kind = "image"
            except oci.InvalidReference:
                kind = "file"
    if kind == "image":
        try:
            url = oci.parse_image(target, plain_http=options.plain_http).manifest_url
        except oci.InvalidReference as exc:
            raise PreheatError(str(exc)) from None
    headers: dict[str, str] = {}
    for item in options.header:
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            raise PreheatError(f"--header {item!r}: expected NAME:VALUE")
        headers[name.strip()] = value.strip()
    try:
        timeout = parse_duration(options.timeout)
    except ValueError as exc:
        raise PreheatError(f"--timeout: {exc}") from None
    args: dict[str, Any] = {"type": kind, "url": url, "scope": options.scope, "timeout": int(timeout * 1e9)}
    optional = {
        "platform": options.platform,
        "ips": options.ips,
        "count": options.count,
        "percentage": options.percentage,
        "tag": options.tag,
        "application": options.application,
        "piece_length": options.piece_length,
        "headers": headers,
        "username": options.username,
        "password": os.environ.get(options.password_env, ""),
    }
    args.update({key: value for key, value in optional.items() if value not in (None, "", [], {})})
    return args


class Client:
    """The manager's Open API over HTTP(S), with a personal access token."""

    def __init__(self, base: str, token: str, ca_cert: str | None = None) -> None:
        self.base = base.rstrip("/")
        self.token = token
        self.context = ssl.create_default_context(cafile=ca_cert) if base.startswith("https") else None

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.base}{path}", data=data, method=method)
        request.add_header("Authorization", f"Bearer {self.token}")
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT, context=self.context) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise PreheatError(f"manager answered {exc.code}: {_message(exc)}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise PreheatError(f"cannot reach the manager at {self.base}: {reason}") from None


def _message(exc: urllib.error.HTTPError) -> str:
    try:
        doc = json.loads(exc.read(65536))
    except (ValueError, OSError):
        return exc.reason or ""
    return str(doc.get("message") or doc) if isinstance(doc, dict) else str(doc)


def render(job: dict[str, Any], out: Any) -> None:
    """Print a job's outcome: per cluster, each (host, URL) cached or failed, then who holds what."""
    progress = job.get("progress") or {}
    result = job.get("result") or {}
    print(f"job {job['id']}: {job['state']} ({progress.get('phase', '?')})", file=out)
    if result.get("error"):
        print(f"  {result['error']}", file=out)
    for state in result.get("job_states") or []:
        cluster = state.get("scheduler_cluster_id")
        where = f" via scheduler {state['scheduler']}" if state.get("scheduler") else ""
        seconds = f" in {state['seconds']:.1f} s" if isinstance(state.get("seconds"), int | float) else ""
        print(f"cluster {cluster}: {state.get('state')}{where}{seconds}", file=out)
        if state.get("error"):
            print(f"  error: {state['error']}", file=out)
        for entry in state.get("results") or []:
            rows = [(t["hostname"], t["ip"], t["url"], "cached") for t in entry.get("success_tasks") or []]
            rows += [
                (t["hostname"], t["ip"], t["url"], f"failed: {t.get('description', '')}")
                for t in entry.get("failure_tasks") or []
            ]
            if rows:
                width = max(len(r[0]) for r in rows)
                for host, ip, url, outcome in sorted(rows):
                    print(f"  {host:<{width}}  {ip:<15}  {outcome:<8}  {url}", file=out)
            peers = entry.get("peers")
            if peers is not None:
                urls = {t["url"] for t in (entry.get("success_tasks") or []) + (entry.get("failure_tasks") or [])}
                print(f"  who holds the {len(urls)} URL(s) now:", file=out)
                for peer in sorted(peers, key=lambda p: p["hostname"]):
                    partial = f", {len(peer['partial'])} partly" if peer.get("partial") else ""
                    print(f"    {peer['hostname']} ({peer['ip']}): {len(peer['cached'])} cached{partial}", file=out)
    if job.get("state") == "FAILURE":
        errors = [s.get("error") for s in result.get("job_states") or [] if s.get("error")]
        if not errors and not result.get("error"):
            print("  the job failed without a reason", file=out)


def run(options: argparse.Namespace, out: Any = sys.stdout) -> int:
    token = os.environ.get(options.token_env, "")
    if not token:
        raise PreheatError(f"no token: set ${options.token_env} to a personal access token with the job scope")
    client = Client(options.manager, token, options.ca_cert)
    body: dict[str, Any] = {"type": "preheat", "args": build_args(options)}
    if options.cluster_ids:
        body["scheduler_cluster_ids"] = options.cluster_ids
    job = client.call("POST", "/oapi/v1/jobs", body)
    if options.no_wait:
        print(json.dumps(job) if options.json else f"job {job['id']}: {job['state']}", file=out)
        return 0
    print(f"job {job['id']} submitted; waiting", file=sys.stderr)
    deadline = time.monotonic() + build_timeout(options) + 300
    while job.get("state") == "PENDING":
        if time.monotonic() > deadline:
            raise PreheatError(f"job {job['id']} still PENDING past its timeout; see the manager")
        time.sleep(max(0.1, options.poll_interval))
        job = client.call("GET", f"/oapi/v1/jobs/{job['id']}")
    if options.json:
        print(json.dumps(job, indent=2), file=out)
    else:
        render(job, out)
    return 0 if job.get("state") == "SUCCESS" else 1


def build_timeout(options: argparse.Namespace) -> float:
    from dragonfly.common.config import parse_duration

    return parse_duration(options.timeout)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``dragonfly preheat``; return the exit status (0 only when the job succeeded)."""
    options = parse_args(_parser(), argv)
    try:
        return run(options)
    except PreheatError as exc:
        print(f"dragonfly preheat: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
