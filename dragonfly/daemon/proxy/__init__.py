"""dfdaemon's HTTP(S) proxy and registry mirror: container runtimes pull blobs through the swarm (docs/proxy.md)."""
