"""TLS files for tests of mutual TLS: identities issued by the cluster's CA, and strangers of another CA."""

from __future__ import annotations

from pathlib import Path

from dragonfly.common import pki, tls


def issue_tls_files(directory: Path, title: str, identities: dict[str, tuple[bool, str]]) -> dict[str, tls.TLSFiles]:
    """Write a cluster CA, another CA and one identity per name; return each identity's TLS files.

    ``identities`` maps a name to (issued by the cluster CA, the IP its certificate names); an identity of the other
    CA trusts that CA, as a host of another cluster would.
    """
    cluster = pki.create_ca(title)
    cluster_cert, _ = cluster.write(directory)
    other = pki.create_ca("another cluster")
    other_dir = directory / "other"
    other_dir.mkdir()
    other_cert, _ = other.write(other_dir)
    out = {}
    for name, (of_cluster, ip) in identities.items():
        authority, ca_file = (cluster, cluster_cert) if of_cluster else (other, other_cert)
        cert, key = pki.issue(authority, name, ips=[ip], roles=["peer"]).write(directory, name)
        out[name] = tls.TLSFiles(ca_cert=str(ca_file), cert=str(cert), key=str(key))
    return out
