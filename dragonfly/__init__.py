"""A P2P file and container-image distribution system, wire-compatible with Dragonfly v2.

Importing this package is cheap on purpose (no grpc, no native modules): ``dfget`` start-up depends on it.
"""

# Generated at build time from the Cargo workspace version (see setup.py): the one version of all three
# distributions. A checkout that was never installed has no _version.py; scripts/install.sh creates it.
from dragonfly._version import __version__

__all__ = ["__version__"]
