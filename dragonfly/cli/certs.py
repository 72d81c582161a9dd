"""``dragonfly certs``: mint a cluster CA and host certificates for mutual TLS, and show what a certificate owns.

    dragonfly certs ca --out DIR [--name CN] [--days 3650]
    dragonfly certs issue --ca-dir DIR --hostname NAME --ip IP [--ip IP ...] --role ROLE [--role ...]
                          [--dns NAME ...] [--days 365] --out DIR [--file-name BASE]
    dragonfly certs show CERT.pem

Roles (subject OU): scheduler, seed-peer, peer, manager. A dfdaemon's certificate needs ``host.hostname`` and
``host.ip`` (its host id is ``<ip>-<hostname>``); the scheduler's needs the address daemons dial. See
``docs/security.md``.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

from dragonfly.cli.arguments import description, parse_args


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dragonfly certs", description=description(__doc__))
    commands = parser.add_subparsers(dest="command", required=True)

    ca = commands.add_parser("ca", help="create a cluster CA (ca.crt, ca.key)")
    ca.add_argument("--out", required=True, help="directory for ca.crt and ca.key (key written mode 0600)")
    ca.add_argument("--name", default="dragonfly cluster CA", help="the CA's common name")
    ca.add_argument("--days", type=int, default=3650, help="validity in days (default 3650)")
    ca.add_argument("--force", action="store_true", help="overwrite an existing CA in --out")

    issue = commands.add_parser("issue", help="issue a host certificate signed by the CA")
    issue.add_argument("--ca-dir", help="directory holding ca.crt and ca.key (from `dragonfly certs ca`)")
    issue.add_argument("--ca-cert", help="CA certificate (instead of --ca-dir)")
    issue.add_argument("--ca-key", help="CA private key (instead of --ca-dir)")
    issue.add_argument("--hostname", required=True, help="the host's name: CN and a DNS SAN (dfdaemon host.hostname)")
    issue.add_argument("--ip", action="append", default=[], help="an IP SAN (repeatable): the address peers dial")
    issue.add_argument("--dns", action="append", default=[], help="an extra DNS SAN (repeatable)")
    issue.add_argument(
        "--role",
        action="append",
        default=[],
        required=True,
        help="scheduler, seed-peer, peer or manager (repeatable)",
    )
    issue.add_argument("--days", type=int, default=365, help="validity in days (default 365, capped by the CA's)")
    issue.add_argument("--out", required=True, help="directory for <file-name>.crt and <file-name>.key")
    issue.add_argument("--file-name", help="base name of the files (default: the hostname)")

    show = commands.add_parser("show", help="print the names, IPs, roles and host ids a certificate owns")
    show.add_argument("cert", help="a PEM certificate")
    return parser


def _load_ca(args: argparse.Namespace) -> object:
    from dragonfly.common.pki import CertificateAuthority

    if args.ca_dir:
        cert, key = Path(args.ca_dir) / "ca.crt", Path(args.ca_dir) / "ca.key"
    elif args.ca_cert and args.ca_key:
        cert, key = Path(args.ca_cert), Path(args.ca_key)
    else:
        raise ValueError("give --ca-dir, or both --ca-cert and --ca-key")
    return CertificateAuthority.load(cert, key)


def _show(path: str) -> str:
    from cryptography import x509

    from dragonfly.common.identity import identity_of

    cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
    identity = identity_of(cert)
    now = datetime.datetime.now(datetime.UTC)
    expires = cert.not_valid_after_utc
    state = "EXPIRED" if expires < now else f"{(expires - now).days} days left"
    lines = [
        f"subject     {cert.subject.rfc4514_string()}",
        f"issuer      {cert.issuer.rfc4514_string()}",
        f"valid       {cert.not_valid_before_utc:%Y-%m-%d} .. {expires:%Y-%m-%d} ({state})",
        f"names       {', '.join(sorted(identity.names)) or '-'}",
        f"ips         {', '.join(sorted(identity.ips)) or '-'}",
        f"roles       {', '.join(sorted(identity.roles)) or '- (none: this certificate may not announce hosts)'}",
        f"host ids    {', '.join(sorted(identity.host_ids)) or '-'}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run ``dragonfly certs``; return the exit status."""
    parser = _parser()
    args = parse_args(parser, argv)
    from dragonfly.common import pki

    try:
        if args.command == "ca":
            out = Path(args.out)
            if (out / "ca.key").exists() and not args.force:
                print(f"dragonfly certs: {out / 'ca.key'} exists; pass --force to replace the CA", file=sys.stderr)
                return 1
            cert_path, key_path = pki.create_ca(args.name, days=args.days).write(out)
            print(f"CA certificate {cert_path}\nCA key         {key_path} (keep it secret; it mints certificates)")
        elif args.command == "issue":
            if not args.ip:
                parser.error("issue: give at least one --ip (the address other components dial)")
            ca = _load_ca(args)
            assert isinstance(ca, pki.CertificateAuthority)
            host = pki.issue(ca, args.hostname, ips=args.ip, dns_names=args.dns, roles=args.role, days=args.days)
            cert_path, key_path = host.write(args.out, args.file_name or args.hostname)
            print(f"certificate {cert_path}\nkey         {key_path}")
            print(_show(str(cert_path)))
        else:
            print(_show(args.cert))
    except (OSError, ValueError) as exc:
        print(f"dragonfly certs: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
