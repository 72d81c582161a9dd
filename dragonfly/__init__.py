"""A P2P file and container-image distribution system, wire-compatible with Dragonfly v2.

Importing this package is cheap on purpose (no grpc, no native modules): ``dfget`` start-up depends on it.
"""

__version__ = "0.1.0"
