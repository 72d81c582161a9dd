"""The persistent cache's figures in the daemon's Prometheus registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class PersistentCacheMetrics:
    """The persistent cache's figures, in the daemon's registry (``dragonfly_dfdaemon_persistent_cache_*``)."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        registry = registry or CollectorRegistry()
        ns = "dragonfly_dfdaemon"
        self.imports = Counter(
            "persistent_cache_imports", "dfcache imports by result.", ["result"], namespace=ns, registry=registry
        )
        self.exports = Counter(
            "persistent_cache_exports",
            "Exports (and replications) by where the content came from: local, swarm, or failed.",
            ["source"],
            namespace=ns,
            registry=registry,
        )
        self.piece_bytes = Counter(
            "persistent_cache_piece_bytes",
            "Bytes of persistent cache pieces fetched from parents: content, and wire (what crossed the network).",
            ["kind"],
            namespace=ns,
            registry=registry,
        )
        self.evictions = Counter(
            "persistent_cache_evictions",
            "Copies dropped by reason: ttl, digest (content no longer matched), space.",
            ["reason"],
            namespace=ns,
            registry=registry,
        )
        self.copies = Gauge("persistent_cache_copies", "Persistent cache copies held.", namespace=ns, registry=registry)
